#!/bin/sh
# mk-docker-opts.sh for flanneld-xdp: turns subnet.env into Docker daemon options, with the same
# flags and output variables as flannel's script, so units that call it keep working:
#   DOCKER_OPT_BIP="--bip=<FLANNEL_SUBNET>"   DOCKER_OPT_IPMASQ="--ip-masq=<not FLANNEL_IPMASQ>"
#   DOCKER_OPT_MTU="--mtu=<FLANNEL_MTU>"      DOCKER_OPTS=" --bip=... --ip-masq=... --mtu=..."
# Docker masquerades only when flannel does not (FLANNEL_IPMASQ=true means the node agent already
# masquerades pod traffic leaving the cluster network). Written atomically (temp file + rename).
set -eu

usage() {
	cat >&2 <<USAGE
usage: $0 [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options from flanneld-xdp's (or flanneld's) subnet.env.
  -f  subnet.env to read (default /run/flannel/subnet.env)
  -d  file to write (default /run/docker_opts.env)
  -i  write each option as its own variable, e.g. DOCKER_OPT_MTU="--mtu=1450"
  -c  write all options combined into one variable (DOCKER_OPTS, or -k's name)
  -k  name of the combined variable (default DOCKER_OPTS)
  -m  leave out --ip-masq (Docker versions without that option)
With neither -i nor -c, both are written.
USAGE
	exit 1
}

flannel_env=/run/flannel/subnet.env
docker_env=/run/docker_opts.env
combined_key=DOCKER_OPTS
individual=false
combined=false
with_ipmasq=true

while getopts "f:d:icmk:h" opt; do
	case "$opt" in
	f) flannel_env=$OPTARG ;;
	d) docker_env=$OPTARG ;;
	i) individual=true ;;
	c) combined=true ;;
	m) with_ipmasq=false ;;
	k) combined_key=$OPTARG ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || usage

if [ "$individual" = false ] && [ "$combined" = false ]; then
	individual=true
	combined=true
fi

case "$combined_key" in
'' | [0-9]* | *[!A-Za-z0-9_]*)
	echo "$0: -k $combined_key: not a shell variable name" >&2
	exit 1
	;;
esac

if [ ! -r "$flannel_env" ]; then
	echo "$0: cannot read $flannel_env (is flanneld-xdp running? it writes the file once it holds a lease)" >&2
	exit 1
fi

# Read the four variables without sourcing the file (it is data, not a script).
FLANNEL_SUBNET=
FLANNEL_MTU=
FLANNEL_IPMASQ=
while IFS='=' read -r key value; do
	case "$key" in
	FLANNEL_SUBNET) FLANNEL_SUBNET=$value ;;
	FLANNEL_MTU) FLANNEL_MTU=$value ;;
	FLANNEL_IPMASQ) FLANNEL_IPMASQ=$value ;;
	esac
done <"$flannel_env"

case "$FLANNEL_SUBNET" in
*[!0-9./]* | '')
	echo "$0: FLANNEL_SUBNET='$FLANNEL_SUBNET' in $flannel_env is not an address/prefix" >&2
	exit 1
	;;
esac
case "$FLANNEL_MTU" in
*[!0-9]* | '')
	echo "$0: FLANNEL_MTU='$FLANNEL_MTU' in $flannel_env is not a number" >&2
	exit 1
	;;
esac

bip="--bip=$FLANNEL_SUBNET"
mtu="--mtu=$FLANNEL_MTU"
if [ "$FLANNEL_IPMASQ" = true ]; then ipmasq="--ip-masq=false"; else ipmasq="--ip-masq=true"; fi

all=" $bip"
[ "$with_ipmasq" = true ] && all="$all $ipmasq"
all="$all $mtu"

tmp="$docker_env.tmp.$$"
trap 'rm -f "$tmp"' EXIT
mkdir -p "$(dirname "$docker_env")"
{
	if [ "$individual" = true ]; then
		echo "DOCKER_OPT_BIP=\"$bip\""
		[ "$with_ipmasq" = true ] && echo "DOCKER_OPT_IPMASQ=\"$ipmasq\""
		echo "DOCKER_OPT_MTU=\"$mtu\""
	fi
	if [ "$combined" = true ]; then
		echo "$combined_key=\"$all\""
	fi
} >"$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$docker_env"
trap - EXIT

#!/bin/sh
# mk-docker-opts.sh for flanneld-xdp: turns subnet.env into Docker daemon options, with the same
# flags, output and rules as flannel's script (dist/mk-docker-opts.sh), so units that call it keep
# working:
#   DOCKER_OPT_BIP="--bip=<FLANNEL_SUBNET>"   DOCKER_OPT_IPMASQ="--ip-masq=<not FLANNEL_IPMASQ>"
#   DOCKER_OPT_MTU="--mtu=<FLANNEL_MTU>"      DOCKER_OPTS="<existing value> --bip=... --ip-masq=... --mtu=..."
# - The combined variable keeps what the environment already holds under its name, in front, as
#   flannel's does: the install guide's unit loads /etc/sysconfig/docker-network, whose
#   DOCKER_NETWORK_OPTIONS (e.g. --insecure-registry) must survive `-k DOCKER_NETWORK_OPTIONS`.
# - Docker masquerades only when flannel does not (FLANNEL_IPMASQ=true means the node agent already
#   masquerades pod traffic leaving the cluster network); any other value than true/false is an error.
# - A variable missing from subnet.env leaves its option out.
# - FLANNEL_IPV6_NETWORK/FLANNEL_IPV6_SUBNET (dual-stack and IPv6-only nodes) give no option, as in
#   flannel's script: Docker's IPv6 (--ipv6, --fixed-cidr-v6) is left to the unit.
# - Like current flannel's, it refuses to run when the routing table already sends the node's own
#   subnet through a gateway (Docker's bridge could not take it).
# Differences, on purpose: subnet.env is read as data (never sourced), a missing subnet.env is an
# error instead of empty options, and the output is written atomically (temp file + rename).
set -eu

usage() {
	cat >&2 <<USAGE
usage: $0 [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options from flanneld-xdp's (or flanneld's) subnet.env.
  -f  subnet.env to read (default /run/flannel/subnet.env)
  -d  file to write (default /run/docker_opts.env)
  -i  write each option as its own variable, e.g. DOCKER_OPT_MTU="--mtu=1450"
  -c  write all options combined into one variable (DOCKER_OPTS, or -k's name)
  -k  name of the combined variable (default DOCKER_OPTS); its value in the environment, if any,
      is kept in front of the options
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

# The combined variable's current value (the key is a plain name, checked above).
existing=$(eval "printf '%s' \"\${$combined_key-}\"")
case "$existing" in
*'"'* | *'\'* | *'$'* | *'`'*)
	echo "$0: \$$combined_key holds a quote, backslash, \$ or backquote; it cannot be kept inside the double-quoted value written to $docker_env" >&2
	exit 1
	;;
esac
newline='
'
case "$existing" in
*"$newline"*)
	echo "$0: \$$combined_key spans several lines; it cannot be kept in $docker_env" >&2
	exit 1
	;;
esac

if [ ! -r "$flannel_env" ]; then
	echo "$0: cannot read $flannel_env (is flanneld-xdp running? it writes the file once it holds a lease)" >&2
	exit 1
fi

# Read the variables without sourcing the file (it is data, not a script).
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
'') ;;
*[!0-9./]* | */*/* | *[!0-9]/* | */ )
	echo "$0: FLANNEL_SUBNET='$FLANNEL_SUBNET' in $flannel_env is not an address/prefix" >&2
	exit 1
	;;
esac
case "$FLANNEL_MTU" in
*[!0-9]*)
	echo "$0: FLANNEL_MTU='$FLANNEL_MTU' in $flannel_env is not a number" >&2
	exit 1
	;;
esac

bip=
mtu=
ipmasq=
[ -n "$FLANNEL_SUBNET" ] && bip="--bip=$FLANNEL_SUBNET"
[ -n "$FLANNEL_MTU" ] && mtu="--mtu=$FLANNEL_MTU"
if [ -n "$FLANNEL_IPMASQ" ] && [ "$with_ipmasq" = true ]; then
	case "$FLANNEL_IPMASQ" in
	true) ipmasq="--ip-masq=false" ;;
	false) ipmasq="--ip-masq=true" ;;
	*)
		echo "$0: invalid value of FLANNEL_IPMASQ in $flannel_env: '$FLANNEL_IPMASQ' (true or false)" >&2
		exit 1
		;;
	esac
fi

# Current flannel's check: the node's own subnet (FLANNEL_SUBNET is its .1 address) must not be
# routed through a gateway already.
if [ -n "$FLANNEL_SUBNET" ] && command -v ip >/dev/null 2>&1; then
	address=${FLANNEL_SUBNET%/*}
	prefix=${FLANNEL_SUBNET#*/}
	last=${address##*.}
	own="${address%.*}.$((last - 1))/$prefix"
	routed=$(ip -4 route show 2>/dev/null | while read -r destination rest; do
		case "$destination $rest" in
		"$own "*" via "*) echo "$destination $rest" ;;
		esac
	done)
	if [ -n "$routed" ]; then
		echo "$0: your routing table already contains the subnet: $routed" >&2
		exit 1
	fi
fi

# flannel's order (its DOCKER_OPT_* variables, sorted by name) and spacing: the existing value and a
# space, then " <option>" for each.
all=
[ -n "$existing" ] && all="$existing "
for option in "$bip" "$ipmasq" "$mtu"; do
	[ -n "$option" ] && all="$all $option"
done

tmp="$docker_env.tmp.$$"
trap 'rm -f "$tmp"' EXIT
mkdir -p "$(dirname "$docker_env")"
{
	if [ "$individual" = true ]; then
		[ -n "$bip" ] && echo "DOCKER_OPT_BIP=\"$bip\""
		[ -n "$ipmasq" ] && echo "DOCKER_OPT_IPMASQ=\"$ipmasq\""
		[ -n "$mtu" ] && echo "DOCKER_OPT_MTU=\"$mtu\""
	fi
	if [ "$combined" = true ]; then
		echo "$combined_key=\"$all\""
	fi
} >"$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$docker_env"
trap - EXIT

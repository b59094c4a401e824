import CBPF
let _probeSize = MemoryLayout<fxdp_config>.size
func _probe() { _ = bpf_object__open_mem; _ = mnl_socket_open; _ = cbpf_setns_net }

// The pins under <bpffs>/flanneld-xdp are what `status`, `peers`, `stats`, bpftool and the next
// daemon find the maps by. Removing one does not stop the data path (the programs hold the maps),
// but a restart would then create an empty map and lose the peers: AttachmentGuard calls this every
// few seconds to put removed pins back.

import BPFLoader

extension FlannelBPF {
    /// Re-pins every map whose pin was removed or replaced; returns what it repaired.
    public func repairPins() throws -> [PinRepair] {
        try object.repairPins()
    }
}

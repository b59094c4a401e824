/// Holds the BPF objects the BPFObjectEmbedder plugin compiles from bpf/ (one base64 string each).
public enum EmbeddedBPF {}

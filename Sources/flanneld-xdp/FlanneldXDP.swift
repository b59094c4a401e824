import FlannelDaemon

@main
struct FlanneldXDPMain {
    static func main() async {
        print("flanneld-xdp: not yet")
    }
}

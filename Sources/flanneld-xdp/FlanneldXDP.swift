// The executable is only the entry point; everything lives in the FlannelDaemon library so tests
// can drive it.
import FlannelDaemon

@main
struct FlanneldXDPMain {
    static func main() async {
        await FlanneldXDP.entry()
    }
}

/* Swift imports CMnl through include/CMnl.h; SwiftPM wants a source file in every C target. */

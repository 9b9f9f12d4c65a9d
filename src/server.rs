//! The Unix socket service behind `electra-edge serve` (in progress).

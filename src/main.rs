//! Command line: parse arguments and call into the library.

fn main() {}

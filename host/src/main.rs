//! The `contextstore` command: run step components and inspect a store.

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    cli::main()
}

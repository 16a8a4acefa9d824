//! The `kubewire` binary: the command line is `kubewire::cli` (commands, flags, exit codes).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    kubewire::cli::main()
}

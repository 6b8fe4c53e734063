//! The `conformal-gpu` command line (see `src/cli/`). Errors print one line on stderr
//! and exit with the code of their class (README).

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let cli = cli::args::Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever an OS or zip message carries.
            eprintln!("error: {}", e.to_string().replace(['\n', '\r'], " "));
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

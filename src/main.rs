//! The `conformal-gpu` command line (see `src/cli/`). Errors print one line on stderr
//! and exit with the code of their class (README).

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use conformal_gpu::cli;

fn main() -> ExitCode {
    let matches = cli::args::Cli::command().get_matches();
    let cli = cli::args::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The sweep's options given on the command line win over its manifest's.
    let explicit = cli::explicit_sweep_options(&matches);
    match cli::run(cli, &explicit) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever an OS or zip message carries.
            eprintln!("error: {}", e.to_string().replace(['\n', '\r'], " "));
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

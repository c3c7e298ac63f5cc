//! The `streamrec` command-line tool: plan, run and check recommendation models.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = streamrec::cli::Cli::parse();
    match streamrec::cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = streamrec::cli::exit_code(&e);
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

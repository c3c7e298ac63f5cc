//! The `streamrec` command-line tool: plan, run and check recommendation models.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`streamrec plan ... | head`), as command-line tools do.
    // SAFETY: setting a signal's disposition to the default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = streamrec::cli::Cli::parse();
    match streamrec::cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = streamrec::cli::exit_code(&e);
            eprintln!("error: {}", streamrec::cli::error_message(&e));
            ExitCode::from(code)
        }
    }
}

//! The `streamrec` command-line tool: plan, run and check recommendation models.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Die quietly on a closed pipe (`streamrec plan ... | head`), as command-line tools do; but
    // not the server or the load generator, whose sockets' peers may reset any time (Rust's
    // default, SIGPIPE ignored: a write to such a socket fails with EPIPE for that connection).
    if !cli.uses_sockets() {
        // SAFETY: setting a signal's disposition to the default before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = cli::exit_code(&e);
            eprintln!("error: {}", cli::error_message(&e));
            ExitCode::from(code)
        }
    }
}

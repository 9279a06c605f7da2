//! `dlock completions` and `dlock manpage`: the command documents itself from its clap
//! definition, so the completions and the man page never drift from the options.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::exit;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> u8 {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "dlock", &mut std::io::stdout());
    0
}

/// Prints the man page, `dlock(1)`.
pub fn manpage() -> u8 {
    let mut page = Vec::new();
    if let Err(error) = clap_mangen::Man::new(Cli::command()).render(&mut page) {
        eprintln!("dlock: cannot render the man page: {error}");
        return exit::SOFTWARE;
    }
    match std::io::stdout().write_all(&page) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("dlock: cannot write the man page: {error}");
            exit::SOFTWARE
        }
    }
}

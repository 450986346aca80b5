//! Stopping `calico train` cleanly. Until the run's checks are done nothing
//! is written, and an interrupt ends the process at once. From then on
//! ([`arm`]), the first interrupt (Ctrl-C, or the SIGTERM a batch scheduler
//! sends before its time limit, or SIGHUP) asks the run to stop at the next
//! step boundary, where it saves a checkpoint that `--resume` continues
//! from; a second one quits at once (the steps since the last checkpoint
//! are then lost, the checkpoints kept whole).

use std::sync::atomic::{AtomicBool, Ordering};

/// The exit code of a run stopped by an interrupt (128 + SIGINT).
pub const EXIT_CODE: i32 = 130;

static ARMED: AtomicBool = AtomicBool::new(false);
static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler. Fails only when a handler is already installed.
pub fn install() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        if !ARMED.load(Ordering::SeqCst) {
            eprintln!("\ninterrupted before the run started: nothing was written");
            std::process::exit(EXIT_CODE);
        }
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: quitting now");
            std::process::exit(EXIT_CODE);
        }
        eprintln!(
            "\ninterrupt: stopping after the current step and saving a checkpoint \
             (interrupt again to quit at once, losing the steps since the last checkpoint)"
        );
    })
    .map_err(|e| anyhow::anyhow!("cannot install the interrupt handler: {e}"))
}

/// From now on an interrupt stops the run at a step boundary.
pub fn arm() {
    ARMED.store(true, Ordering::SeqCst);
}

/// Whether an interrupt asked the run to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

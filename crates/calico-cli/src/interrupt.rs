//! Stopping `calico train` and `calico predict` cleanly. Until the run's
//! checks are done nothing is written, and an interrupt ends the process at
//! once. From then on ([`arm`]), the first interrupt (Ctrl-C, or the SIGTERM
//! a batch scheduler sends before its time limit, or SIGHUP) asks the run
//! to stop at the next boundary: `train` after the current step, where it
//! saves a checkpoint that `--resume` continues from; `predict` after the
//! samples being answered, whose answers `--resume` keeps. A second one
//! quits at once (the steps since the last checkpoint are then lost, the
//! checkpoints kept whole).
//!
//! A signal the process was started with ignored stays ignored: `nohup
//! calico train …` keeps training when its terminal closes, and a run
//! started in the background of a script ignores the script's Ctrl-C, as
//! they would without the handler.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The exit code of a run stopped by an interrupt (128 + SIGINT).
pub const EXIT_CODE: i32 = 130;

static ARMED: AtomicBool = AtomicBool::new(false);
static REQUESTED: AtomicBool = AtomicBool::new(false);
static FIRST: OnceLock<&'static str> = OnceLock::new();

/// What `calico train` says at the first interrupt.
pub const TRAIN_STOPPING: &str = "interrupt: stopping after the current step and saving a \
     checkpoint (interrupt again to quit at once, losing the steps since the last checkpoint)";

/// Handles SIGINT, SIGTERM and SIGHUP, those of them that are not ignored,
/// on a thread of its own; `first` is said at the first interrupt once
/// armed (what the command does before it stops).
#[cfg(unix)]
pub fn install(first: &'static str) -> anyhow::Result<()> {
    let _ = FIRST.set(first);
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let wanted: Vec<i32> = [SIGINT, SIGTERM, SIGHUP]
        .into_iter()
        .filter(|&s| !ignored(s))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let mut signals = signal_hook::iterator::Signals::new(&wanted)
        .map_err(|e| anyhow::anyhow!("cannot install the interrupt handler: {e}"))?;
    std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            for _ in signals.forever() {
                on_interrupt();
            }
        })
        .map_err(|e| anyhow::anyhow!("cannot start the interrupt handler: {e}"))?;
    Ok(())
}

/// Elsewhere the default handling stays: an interrupt ends the process.
#[cfg(not(unix))]
pub fn install(_first: &'static str) -> anyhow::Result<()> {
    Ok(())
}

/// Whether signal `sig` is ignored (set so by the parent: `nohup`, a
/// shell's background job).
#[cfg(unix)]
fn ignored(sig: i32) -> bool {
    // SAFETY: a null new action only reads the current one into `old`,
    // a plain C struct that zeroed memory initialises.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

fn on_interrupt() {
    // Standard error may be gone (a closed terminal): never panic on it.
    let say = |text: &str| {
        let _ = writeln!(std::io::stderr(), "\n{text}");
    };
    if !ARMED.load(Ordering::SeqCst) {
        say("interrupted before the run started: nothing was written");
        std::process::exit(EXIT_CODE);
    }
    if REQUESTED.swap(true, Ordering::SeqCst) {
        say("interrupted again: quitting now");
        std::process::exit(EXIT_CODE);
    }
    say(FIRST.get().copied().unwrap_or(TRAIN_STOPPING));
}

/// From now on an interrupt stops the run at a step boundary.
pub fn arm() {
    ARMED.store(true, Ordering::SeqCst);
}

/// Whether an interrupt asked the run to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

//! Helpers shared by the CLI tests: run the binary, make a scratch directory,
//! generate SynthParts and build samples from it, signal a running binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `calico` with `args`.
pub fn calico(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_calico"))
        .args(args)
        .output()
        .expect("run calico")
}

/// A fresh scratch directory for one test.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("calico-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `calico data synth` into `dir/synth` (`images` per format, 64×64).
pub fn synth(dir: &Path, images: usize) -> PathBuf {
    let out = dir.join("synth");
    let n = images.to_string();
    let o = calico(&[
        "data",
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--images",
        &n,
        "--size",
        "64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

/// `calico data build` over the three formats of a SynthParts directory.
pub fn build(synth: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec![
        "data".into(),
        "build".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    for f in ["paco_lvis", "part_image_net", "ade20k_part234"] {
        args.push("--source".into());
        args.push(format!("{f}={}", synth.join(f).display()));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    calico(&refs)
}

/// Runs `calico args` with standard error in `log` until `ready()` holds,
/// then sends it SIGINT as Ctrl-C does; its exit code, and whether it was
/// still running at the signal.
pub fn interrupt_when(args: &[&str], log: &Path, ready: impl Fn() -> bool) -> (Option<i32>, bool) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_calico"));
    cmd.args(args);
    signal_when(cmd, "INT", log, ready)
}

/// Runs `cmd` with standard error in `log` until `ready()` holds, then
/// sends it signal `sig` (a name `kill` knows: INT, TERM, HUP, KILL); its exit code, and whether
/// it was still running at the signal.
pub fn signal_when(
    mut cmd: Command,
    sig: &str,
    log: &Path,
    ready: impl Fn() -> bool,
) -> (Option<i32>, bool) {
    default_signals(&mut cmd);
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !ready()
        && child.try_wait().unwrap().is_none()
        && t.elapsed() < std::time::Duration::from_secs(600)
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let running = child.try_wait().unwrap().is_none();
    let pid = child.id().to_string();
    // The shell's own `kill`: no procps needed.
    let sent = Command::new("sh")
        .args(["-c", &format!("kill -{sig} {pid}")])
        .status()
        .unwrap();
    assert!(sent.success() || !running);
    (child.wait().unwrap().code(), running)
}

/// Makes `cmd` start with SIGINT, SIGTERM and SIGHUP at their default
/// actions. A process inherits ignored signals, and `calico train` keeps them
/// ignored as `nohup` expects (and `calico predict` too), so without this the
/// interrupt tests would fail
/// whenever the test runner itself was started with them ignored (a
/// background job of a shell without job control is).
pub fn default_signals(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the hook calls only `signal`, which is
    // async-signal-safe, and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                if libc::signal(sig, libc::SIG_DFL) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

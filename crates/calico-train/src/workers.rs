//! Running independent pieces of work on several threads, in order.
//!
//! * [`map_ordered`]: the pieces of one optimizer step (a micro-batch, a
//!   slice of stage 1's batch). Each builds its own autograd graph and
//!   returns its gradients; the caller adds them in piece order, so the sums
//!   — and the run — do not depend on how many threads computed them.
//! * [`stream_ordered`]: answering samples (`calico predict`, validation
//!   inside training), each handed on in order as soon as the ones before it
//!   are in, and stoppable between two samples.
//!
//! The threads are those of a rayon pool made for the call ([`on_pool`]),
//! so a kernel that splits its work with rayon (candle's softmax, norms and
//! convolutions, `calico_nn::qgemv`'s products) runs on the worker that
//! called it. With plain threads every worker's rayon work went to the one
//! global pool, a single thread once `RAYON_NUM_THREADS=1` makes each
//! worker's kernels single-threaded, and the workers queued there.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use crate::TrainError;

/// `f(0), …, f(n − 1)` in order, computed on up to `workers` threads (piece
/// `i` on thread `i mod workers`; all on the calling thread when
/// `workers <= 1`). A thread that panics is reported as an error naming
/// the piece (`what(i)`).
pub fn map_ordered<T, F, W>(n: usize, workers: usize, f: F, what: W) -> Result<Vec<T>, TrainError>
where
    T: Send,
    F: Fn(usize) -> Result<T, TrainError> + Sync,
    W: Fn(usize) -> String,
{
    let workers = workers.min(n).max(1);
    if workers == 1 {
        return (0..n).map(&f).collect();
    }
    let mut slots: Vec<Option<Result<T, TrainError>>> = (0..n).map(|_| None).collect();
    let job = |w: usize| {
        (w..n)
            .step_by(workers)
            .map(|i| (i, f(i)))
            .collect::<Vec<_>>()
    };
    let ((), done) = on_pool(workers, job, || ())?;
    // A panicking thread leaves its slots empty; reported below.
    for (i, r) in done.into_iter().flatten().flatten() {
        slots[i] = Some(r);
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            s.unwrap_or_else(|| {
                Err(TrainError::Data(format!(
                    "the thread computing {} stopped unexpectedly",
                    what(i)
                )))
            })
        })
        .collect()
}

/// `f(i)` for every `i` of `range`, computed on up to `workers` threads
/// that each take the next index as they finish one (all on the calling
/// thread when `workers <= 1`), and handed to `emit(i, value)` on the
/// calling thread in index order, each as soon as every index before it has
/// been handed on.
///
/// `stop` is asked on the calling thread, before each index with one
/// thread and every [`STOP_POLL`] while threads work. Once it holds no
/// further index is started; the ones started are finished and handed on,
/// so what was emitted is always the first indices of `range`. The first
/// error in index order (of `f` or of `emit`) ends the run and is returned
/// once the threads have finished their current piece. A thread that
/// panics is reported as an error naming the first index that did not
/// arrive (`what(i)`).
///
/// Returns how many indices were handed on: `range.len()` unless `stop`
/// cut the run short.
pub fn stream_ordered<T, E, F, H, W>(
    range: Range<usize>,
    workers: usize,
    stop: &mut dyn FnMut() -> bool,
    f: F,
    mut emit: H,
    what: W,
) -> Result<usize, E>
where
    T: Send,
    E: Send + From<TrainError>,
    F: Fn(usize) -> Result<T, E> + Sync,
    H: FnMut(usize, T) -> Result<(), E>,
    W: Fn(usize) -> String,
{
    let workers = workers.clamp(1, range.len().max(1));
    if workers == 1 {
        for i in range.clone() {
            if stop() {
                return Ok(i - range.start);
            }
            emit(i, f(i)?)?;
        }
        return Ok(range.len());
    }
    if stop() {
        return Ok(0);
    }
    let next = AtomicUsize::new(range.start);
    // Set once no further index should be started (a stop or an error).
    let halt = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<T, E>)>();
    // Each worker owns a sender, so the receiver ends once every worker
    // has returned or panicked.
    let senders: Vec<_> = (0..workers)
        .map(|_| std::sync::Mutex::new(Some(tx.clone())))
        .collect();
    drop(tx);
    let job = |w: usize| {
        let Some(tx) = senders[w].lock().ok().and_then(|mut s| s.take()) else {
            return;
        };
        loop {
            if halt.load(Ordering::SeqCst) {
                break;
            }
            let i = next.fetch_add(1, Ordering::SeqCst);
            if i >= range.end || tx.send((i, f(i))).is_err() {
                break;
            }
        }
    };
    let receive = || {
        let mut waiting = BTreeMap::new();
        let mut turn = range.start;
        let mut result = Ok(());
        loop {
            if !halt.load(Ordering::SeqCst) && stop() {
                halt.store(true, Ordering::SeqCst);
            }
            let (i, r) = match rx.recv_timeout(STOP_POLL) {
                Ok(got) => got,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            waiting.insert(i, r);
            while let Some(r) = waiting.remove(&turn) {
                if let Err(e) = r.and_then(|v| emit(turn, v)) {
                    result = Err(e);
                    break;
                }
                turn += 1;
            }
            if result.is_err() {
                // The threads finish their current piece and take no more.
                halt.store(true, Ordering::SeqCst);
                break;
            }
        }
        (result, turn)
    };
    let ((result, turn), done) = on_pool(workers, job, receive).map_err(E::from)?;
    result?;
    if done.iter().any(Option::is_none) {
        return Err(E::from(TrainError::Data(format!(
            "the thread computing {} stopped unexpectedly",
            what(turn)
        ))));
    }
    Ok(turn - range.start)
}

/// Runs `job(0), …, job(workers − 1)`, each on its own thread of a rayon
/// pool of `workers` threads made for the call, while `main` runs on the
/// calling thread; returns `main`'s result and each job's, `None` for a job
/// that panicked.
pub fn on_pool<R, M>(
    workers: usize,
    job: impl Fn(usize) -> R + Sync,
    main: impl FnOnce() -> M,
) -> Result<(M, Vec<Option<R>>), TrainError>
where
    R: Send,
{
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("calico-worker-{i}"))
        .build()
        .map_err(|e| TrainError::Data(format!("starting {workers} worker threads: {e}")))?;
    let slots: Vec<std::sync::Mutex<Option<R>>> =
        (0..workers).map(|_| std::sync::Mutex::new(None)).collect();
    // Every job waits until all have started, each on its own thread: a
    // thread blocked in a kernel's rayon join may run queued work, and a
    // job still queued then would run inside another's kernel, stalling it.
    let started = std::sync::Barrier::new(workers);
    let got = pool.in_place_scope(|scope| {
        for (w, slot) in slots.iter().enumerate() {
            let (job, started) = (&job, &started);
            scope.spawn(move |_| {
                started.wait();
                // A panic is reported as a missing result, not re-raised.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(w)));
                if let (Ok(r), Ok(mut slot)) = (r, slot.lock()) {
                    *slot = Some(r);
                }
            });
        }
        main()
    });
    let done = slots
        .into_iter()
        .map(|s| s.into_inner().ok().flatten())
        .collect();
    Ok((got, done))
}

/// Runs `f` on a rayon pool of one thread made for it and waits for it,
/// so that the rayon work of `f`'s kernels stays on that thread: for a
/// long-lived worker of several (`calico serve`'s), which [`on_pool`]
/// cannot hold. Runs `f` on the calling thread if the pool cannot start.
pub fn on_own_pool<R: Send>(name: String, f: impl FnOnce() -> R + Send) -> R {
    match rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(move |_| name.clone())
        .build()
    {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

/// How often [`stream_ordered`] asks its `stop` while threads work.
pub const STOP_POLL: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order_for_any_thread_count() {
        for workers in [0, 1, 2, 3, 8] {
            let out = map_ordered(7, workers, |i| Ok(i * i), |i| format!("piece {i}")).unwrap();
            assert_eq!(out, vec![0, 1, 4, 9, 16, 25, 36], "workers {workers}");
        }
    }

    #[test]
    fn errors_and_panics_are_reported() {
        let e = map_ordered(
            4,
            2,
            |i| match i {
                2 => Err(TrainError::Data("bad piece".into())),
                _ => Ok(i),
            },
            |i| format!("piece {i}"),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "bad piece");
        let e = map_ordered(
            4,
            2,
            |i| {
                if i == 3 {
                    panic!("boom");
                }
                Ok(i)
            },
            |i| format!("piece {i}"),
        )
        .unwrap_err();
        // The thread computing pieces 1 and 3 lost both; the first is named.
        assert!(
            e.to_string().contains("piece 1") && e.to_string().contains("stopped unexpectedly"),
            "{e}"
        );
    }

    /// Runs `stream_ordered` over `3..3 + n`, recording what is emitted.
    fn stream(
        n: usize,
        workers: usize,
        stop: &mut dyn FnMut() -> bool,
        f: impl Fn(usize) -> Result<usize, TrainError> + Sync,
    ) -> (Result<usize, TrainError>, Vec<(usize, usize)>) {
        let mut got = Vec::new();
        let r = stream_ordered(
            3..3 + n,
            workers,
            stop,
            f,
            |i, v| {
                got.push((i, v));
                Ok(())
            },
            |i| format!("sample {i}"),
        );
        (r, got)
    }

    #[test]
    fn streamed_results_are_emitted_in_order_for_any_thread_count() {
        for workers in [0, 1, 2, 3, 8] {
            // Later indices finish first, so order must be restored.
            let (r, got) = stream(7, workers, &mut || false, |i| {
                std::thread::sleep(std::time::Duration::from_millis((12 - i as u64) * 2));
                Ok(i * i)
            });
            assert_eq!(r.unwrap(), 7, "workers {workers}");
            let want: Vec<_> = (3..10).map(|i| (i, i * i)).collect();
            assert_eq!(got, want, "workers {workers}");
        }
    }

    #[test]
    fn a_stop_leaves_the_first_indices_emitted() {
        for workers in [1, 2, 3] {
            let started = AtomicUsize::new(0);
            let mut stop = || started.load(Ordering::SeqCst) >= 4;
            let (r, got) = stream(10, workers, &mut stop, |i| {
                started.fetch_add(1, Ordering::SeqCst);
                // Slow enough that the stop is seen before all are taken.
                std::thread::sleep(STOP_POLL * 2);
                Ok(i)
            });
            let done = r.unwrap();
            assert!((4..10).contains(&done), "workers {workers}: {done}");
            let want: Vec<_> = (3..3 + done).map(|i| (i, i)).collect();
            assert_eq!(got, want, "workers {workers}");
        }
        // A stop that holds from the start answers nothing.
        let (r, got) = stream(5, 2, &mut || true, Ok);
        assert_eq!((r.unwrap(), got), (0, vec![]));
    }

    #[test]
    fn a_streamed_error_ends_the_run_after_the_indices_before_it() {
        for workers in [1, 2, 4] {
            let (r, got) = stream(12, workers, &mut || false, |i| match i {
                6 => Err(TrainError::Data(format!("bad sample {i}"))),
                _ => Ok(i),
            });
            assert_eq!(r.unwrap_err().to_string(), "bad sample 6");
            assert_eq!(got, vec![(3, 3), (4, 4), (5, 5)], "workers {workers}");
        }
        // An error of `emit` ends it too, and nothing after is emitted.
        let mut got = Vec::new();
        let r = stream_ordered(
            0..9,
            2,
            &mut || false,
            Ok::<_, TrainError>,
            |i, _| {
                if i == 2 {
                    return Err(TrainError::Data("disk full".into()));
                }
                got.push(i);
                Ok(())
            },
            |i| format!("sample {i}"),
        );
        assert_eq!(r.unwrap_err().to_string(), "disk full");
        assert_eq!(got, vec![0, 1]);
    }

    #[test]
    fn a_panicking_thread_is_an_error_naming_the_missing_index() {
        let (r, got) = stream(8, 2, &mut || false, |i| {
            if i == 5 {
                panic!("boom");
            }
            Ok(i)
        });
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("sample 5") && e.contains("stopped unexpectedly"),
            "{e}"
        );
        assert_eq!(got, vec![(3, 3), (4, 4)]);
    }

    #[test]
    fn workers_run_on_a_pool_of_their_own() {
        // Several workers: each piece runs on a thread of a pool of that
        // many threads, so its kernels' rayon work stays there.
        let seen = map_ordered(
            6,
            3,
            |_| Ok((rayon::current_thread_index(), rayon::current_num_threads())),
            |i| format!("piece {i}"),
        )
        .unwrap();
        assert!(seen.iter().all(|&(t, n)| t.is_some() && n == 3), "{seen:?}");
        let mut threads = Vec::new();
        let done = stream_ordered(
            0..5,
            2,
            &mut || false,
            |_| Ok::<_, TrainError>((rayon::current_thread_index(), rayon::current_num_threads())),
            |_, got| {
                threads.push(got);
                Ok(())
            },
            |i| format!("sample {i}"),
        )
        .unwrap();
        assert_eq!(done, 5);
        assert!(
            threads.iter().all(|&(t, n)| t.is_some() && n == 2),
            "{threads:?}"
        );
        // Each job has a thread of its own, even jobs that end at once.
        let ((), threads) = on_pool(4, |_| rayon::current_thread_index(), || ()).unwrap();
        let mut threads: Vec<_> = threads.into_iter().map(|t| t.flatten()).collect();
        threads.sort();
        assert_eq!(threads, vec![Some(0), Some(1), Some(2), Some(3)]);
        // A long-lived worker gets a pool of one thread.
        let name = on_own_pool("calico-test-worker".into(), || {
            assert_eq!(rayon::current_num_threads(), 1);
            std::thread::current().name().map(String::from)
        });
        assert_eq!(name.as_deref(), Some("calico-test-worker"));
    }
}

//! Running independent pieces of one optimizer step on several threads.
//!
//! Each piece (a micro-batch, a slice of stage 1's batch) builds its own
//! autograd graph and returns its gradients; the caller adds them in piece
//! order, so the sums — and the run — do not depend on how many threads
//! computed them.

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
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || {
                    (w..n)
                        .step_by(workers)
                        .map(|i| (i, f(i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            // A panicking thread leaves its slots empty; reported below.
            if let Ok(done) = h.join() {
                for (i, r) in done {
                    slots[i] = Some(r);
                }
            }
        }
    });
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
}

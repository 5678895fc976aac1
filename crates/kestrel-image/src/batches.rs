//! Loading items on worker threads while the caller runs a model on batches of them, the
//! way `kestrel predict` and `kestrel-serve predict` both read photos (fastai's
//! `DataLoader` with `num_workers`, for inference: items in order, no shuffling).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Loads items `0..n` with `load` on `workers` threads (at least one) and hands them to
/// `run` on the calling thread in batches of up to `bs` (at least 1), in index order:
/// `run(indices, items)` with the items' indices, ascending. An item whose `load` fails
/// is left out of its batch; its error is returned with its index, in index order.
///
/// At most `2·bs` loaded items wait in the queue, so memory does not grow with `n`. The
/// batches are the same whatever the number of workers or their timing.
pub fn ordered_batches<T: Send, E: Send>(
    n: usize,
    bs: usize,
    workers: usize,
    load: impl Fn(usize) -> Result<T, E> + Sync,
    mut run: impl FnMut(Vec<usize>, Vec<T>),
) -> Vec<(usize, E)> {
    let bs = bs.max(1);
    let next = AtomicUsize::new(0);
    let mut failures = Vec::new();
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Result<T, E>)>(2 * bs);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            let (tx, next, load) = (tx.clone(), &next, &load);
            s.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || tx.send((i, load(i))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // Items arrive out of order; hold them until every earlier one has arrived.
        let mut pending = BTreeMap::new();
        let mut next_out = 0usize;
        let (mut idx, mut items) = (Vec::with_capacity(bs), Vec::with_capacity(bs));
        for (i, r) in rx {
            pending.insert(i, r);
            while let Some(r) = pending.remove(&next_out) {
                match r {
                    Ok(item) => {
                        idx.push(next_out);
                        items.push(item);
                    }
                    Err(e) => failures.push((next_out, e)),
                }
                next_out += 1;
                if items.len() == bs {
                    run(std::mem::take(&mut idx), std::mem::take(&mut items));
                }
            }
        }
        if !items.is_empty() {
            run(idx, items);
        }
    });
    failures
}

/// [`ordered_batches`] over files, for prediction: loads `paths[i]` with `load` and maps each
/// batch of loaded items with `run` to one output per item. Returns one result per path,
/// in order: a file `load` refused gets its own error; when `run` fails (or returns a
/// number of outputs other than its items'), every item of that batch gets the error,
/// prefixed with its path.
pub fn map_files_in_batches<T: Send, R>(
    paths: &[PathBuf],
    bs: usize,
    workers: usize,
    load: impl Fn(&Path) -> crate::Result<T> + Sync,
    mut run: impl FnMut(Vec<T>) -> crate::Result<Vec<R>>,
) -> Vec<crate::Result<R>> {
    let mut results: Vec<Option<crate::Result<R>>> = (0..paths.len()).map(|_| None).collect();
    let failures = ordered_batches(paths.len(), bs, workers, |i| load(&paths[i]), |idx, items| {
        let n = items.len();
        let out = run(items).and_then(|out| {
            anyhow::ensure!(out.len() == n, "{} outputs for a batch of {n}", out.len());
            Ok(out)
        });
        match out {
            Ok(out) => {
                for (i, r) in idx.into_iter().zip(out) {
                    results[i] = Some(Ok(r));
                }
            }
            Err(e) => {
                for i in idx {
                    results[i] = Some(Err(anyhow::anyhow!("{}: {e:#}", paths[i].display())));
                }
            }
        }
    });
    for (i, e) in failures {
        results[i] = Some(Err(e));
    }
    results
        .into_iter()
        .zip(paths)
        .map(|(r, p)| r.unwrap_or_else(|| Err(anyhow::anyhow!("{}: not processed", p.display()))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_come_in_order_and_failures_are_returned() {
        for workers in [1, 3, 8] {
            let mut seen = Vec::new();
            let failures = ordered_batches(
                10,
                4,
                workers,
                |i| if i % 4 == 1 { Err(format!("bad {i}")) } else { Ok(i * 10) },
                |idx, items| {
                    assert_eq!(idx.iter().map(|i| i * 10).collect::<Vec<_>>(), items);
                    seen.push(idx);
                },
            );
            // 1, 5 and 9 fail; the others come in batches of 4 in index order.
            assert_eq!(seen, vec![vec![0, 2, 3, 4], vec![6, 7, 8]], "{workers} workers");
            assert_eq!(failures, vec![(1, "bad 1".to_owned()), (5, "bad 5".to_owned()), (9, "bad 9".to_owned())]);
        }
    }

    #[test]
    fn files_map_to_results_in_order_with_batch_errors_named() {
        let paths: Vec<PathBuf> = ["a", "bad", "c", "d", "e"].iter().map(PathBuf::from).collect();
        let r = map_files_in_batches(
            &paths,
            2,
            2,
            |p| if p == Path::new("bad") { anyhow::bail!("cannot read bad") } else { Ok(p.display().to_string()) },
            |items| if items.contains(&"e".to_string()) { anyhow::bail!("model failed") } else { Ok(items.iter().map(|s| s.to_uppercase()).collect()) },
        );
        let shown: Vec<String> = r.iter().map(|r| match r { Ok(v) => v.clone(), Err(e) => format!("{e:#}") }).collect();
        // Batches of 2 loaded items: [a, c], then [d, e], which fails as a whole.
        assert_eq!(shown, ["A", "cannot read bad", "C", "d: model failed", "e: model failed"]);
    }

    #[test]
    fn no_items_and_zero_sizes() {
        let mut calls = 0;
        let failures = ordered_batches::<u8, ()>(0, 0, 0, |_| Ok(0), |_, _| calls += 1);
        assert!(failures.is_empty());
        assert_eq!(calls, 0);
        let mut sizes = Vec::new();
        ordered_batches::<usize, ()>(3, 0, 0, Ok, |idx, _| sizes.push(idx.len()));
        assert_eq!(sizes, vec![1, 1, 1]);
    }
}

//! The regex labeller (first line: the pattern; other lines: file names) and the CSV
//! table + ColReader labeller (the same bytes as a CSV file).
#![no_main]
use kestrel::data::{Items, Labeller};
use kestrel::data::items::CsvTable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    if let Some(pattern) = lines.next()
        && let Ok(l) = Labeller::name_regex(pattern)
    {
        let paths = lines.take(64).map(std::path::PathBuf::from).collect();
        let items = Items { paths, table: None, n_ignored: 0, ignored: Vec::new() };
        let _ = l.label_all(&items);
    }
    let csv = kestrel_fuzz::scratch().join("labels.csv");
    std::fs::write(&csv, data).expect("scratch file");
    if let Ok(t) = CsvTable::read(&csv)
        && let Some(first) = t.headers.first().cloned()
    {
        let last = t.headers.last().cloned().unwrap_or_default();
        if let Ok(items) = Items::from_csv(t, &first, None, "") {
            let _ = Labeller::Col { col: last, label_delim: Some(' ') }.label_all(&items);
        }
    }
});

//! Unit tests of `metrics`: histograms, summaries, hgrm dumps.
use super::*;

#[test]
fn worker_hand_over_resets_the_interval() {
    let mut w = WorkerHists::new(2);
    w.record(Some(1), 200, 800, 1000, false);
    w.record(None, 503, 0, 50, true);
    w.record(Some(7), 999, 0, 50, true);
    let s = w.take(3, Instant::now(), &crossbeam_channel::never());
    assert_eq!((s.worker, s.requests, s.errors), (3, 3, 2));
    assert_eq!(s.codes.len(), 3);
    assert_eq!(s.codes[1][code_index(200)], 1);
    assert_eq!(s.codes[2][code_index(503)], 1);
    assert_eq!(
        s.codes[2][code_index(599)],
        1,
        "unknown backend counts as none"
    );
    assert_eq!(code_of(code_index(404)), 404);
    assert!(w.codes.iter().flatten().all(|&n| n == 0));
    assert_eq!(s.total.len(), 3);
    assert_eq!(s.backends[1].len(), 1);
    assert_eq!(s.backends[0].len(), 0);
    assert_eq!(w.total.len(), 0);
    assert!(!w.due(Instant::now()));
}

#[test]
fn handed_over_histograms_come_back_empty_and_the_last_second_holds_what_they_carried() {
    let agg = Aggregator::start(2, None).expect("aggregator");
    let h = agg.handover();
    let mut w = WorkerHists::new(2);
    for us in [100, 200, 300] {
        w.record(Some(1), 200, us, us, false);
    }
    h.tx.send(w.take(0, Instant::now(), &h.spares)).unwrap();
    // The worker's three histograms (total, two backends) come back, empty, for reuse.
    for _ in 0..3 {
        let spare = h
            .spares
            .recv_timeout(Duration::from_secs(5))
            .expect("a spare");
        assert!(spare.is_empty());
    }
    // Within the next second's publication, the last second holds the samples.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = agg.summary.lock().unwrap().last_total.len();
        if n == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "last second has {n} samples");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The next interval started in a spare (or a new histogram), empty.
    w.record(Some(1), 200, 50, 50, false);
    let s = w.take(0, Instant::now(), &h.spares);
    assert_eq!((s.total.len(), s.backends[1].len()), (1, 1));
    drop((h, s));
    agg.finish().expect("finish");
}

#[test]
fn grpc_calls_are_counted_per_worker_and_handed_over() {
    let mut w = WorkerHists::new(2);
    w.record_grpc(0, b"/tts.TTS/Synthesize", 0);
    w.record_grpc(0, b"/tts.TTS/Synthesize", 0);
    w.record_grpc(1, b"/tts.TTS/Synthesize", 14);
    w.record_grpc(1, b"/tts.TTS/SynthesizeStream", 99);
    w.record_grpc(1, b"no-slash", 0);
    let s = w.take(0, Instant::now(), &crossbeam_channel::never());
    let mut rows: Vec<_> = s.grpc.rows().collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            (0, &b"/tts.TTS/Synthesize"[..], 0, 2),
            (1, &b"/tts.TTS/Synthesize"[..], 14, 1),
            (1, &b"/tts.TTS/SynthesizeStream"[..], 2, 1),
            (1, &b"other"[..], 0, 1),
        ],
        "invalid statuses count as UNKNOWN, paths not starting with / as other"
    );
    assert!(w.grpc.is_empty(), "a new interval starts empty");
    w.record_grpc(0, b"/tts.TTS/Synthesize", 0);
    let again = w.take(0, Instant::now(), &crossbeam_channel::never());
    assert_eq!(
        again.grpc.rows().count(),
        1,
        "ids stay stable across hand-overs"
    );
    assert!(w
        .take(0, Instant::now(), &crossbeam_channel::never())
        .grpc
        .is_empty());
}

#[test]
fn grpc_methods_are_bounded_per_worker_and_per_process() {
    let name = |i: usize| format!("/svc.S/M{i}");
    let mut totals = GrpcTotals::default();
    // Two workers see 48 methods each, overlapping in 16: 80 distinct in the process.
    for (worker, range) in [(0, 0..48), (1, 32..80)] {
        let mut w = WorkerHists::new(1);
        for i in range {
            w.record_grpc(0, name(i).as_bytes(), 0);
        }
        let s = w.take(worker, Instant::now(), &crossbeam_channel::never());
        totals.add(&s.grpc);
    }
    assert_eq!(totals.methods(), GRPC_MAX_METHODS);
    let sum: u64 = totals.rows().map(|r| r.3).sum();
    assert_eq!(sum, 96, "every call is counted, by name or as other");
    let other: u64 = totals
        .rows()
        .filter(|r| r.1 == GRPC_OTHER)
        .map(|r| r.3)
        .sum();
    // Worker 0's 48 methods got names; of worker 1's 32 new ones, 16 fit and 16 are other.
    assert_eq!(other, 16);
    let m40: u64 = totals.rows().filter(|r| r.1 == name(40)).map(|r| r.3).sum();
    assert_eq!(m40, 2, "merged across workers");
    // One worker alone is bounded too.
    let mut w = WorkerHists::new(1);
    for i in 0..100 {
        w.record_grpc(0, name(i).as_bytes(), 13);
    }
    let s = w.take(0, Instant::now(), &crossbeam_channel::never());
    assert_eq!(s.grpc.rows().count(), GRPC_MAX_METHODS + 1);
    let long = format!("/{}", "x".repeat(GRPC_METHOD_MAX_LEN));
    let mut w = WorkerHists::new(1);
    w.record_grpc(0, long.as_bytes(), 0);
    assert_eq!(w.grpc.rows().next().unwrap().1, b"other");
}

#[test]
fn aggregator_merges_grpc_calls_into_the_summary() {
    let agg = Aggregator::start(2, None).unwrap();
    for worker in 0..3 {
        let mut w = WorkerHists::new(2);
        w.record_grpc(1, b"/tts.TTS/Synthesize", 14);
        w.record_grpc(0, b"/tts.TTS/Synthesize", 0);
        agg.tx
            .send(w.take(worker, Instant::now(), &crossbeam_channel::never()))
            .unwrap();
    }
    let summary = agg.summary.clone();
    agg.finish().unwrap();
    let sum = summary.lock().unwrap();
    let rows: Vec<_> = sum.grpc.rows().collect();
    assert_eq!(
        rows,
        [
            (0, "/tts.TTS/Synthesize", 0, 3),
            (1, "/tts.TTS/Synthesize", 14, 3)
        ]
    );
}

#[test]
fn hgrm_lists_percentiles_in_milliseconds() {
    let mut h = histogram();
    for v in 1..=1000u64 {
        h.record(v * 1000).unwrap();
    }
    let mut out = Vec::new();
    write_percentiles(&mut out, &h).unwrap();
    let text = String::from_utf8(out).unwrap();
    let mut lines = text.lines();
    assert!(lines
        .next()
        .unwrap()
        .contains("Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(
        text.contains("#[Max     =     1000.447, Total count    =         1000]"),
        "{text}"
    );
    let last_row = text
        .lines()
        .rev()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .unwrap();
    assert!(last_row.contains("1.000000000000       1000"), "{last_row}");
    let median = text
        .lines()
        .find(|l| l.contains(" 0.500000000000 "))
        .expect("median row");
    let v: f64 = median.split_whitespace().next().unwrap().parse().unwrap();
    assert!((v - 500.0).abs() < 1.0, "{median}");
}

#[test]
fn aggregator_merges_workers_and_writes_dumps() {
    let dir = tempdir();
    let agg = Aggregator::start(
        1,
        Some(DumpConfig {
            dir: dir.clone(),
            prefix: "round-robin_persistent".into(),
            backend_names: Arc::new(|i| (i == 0).then(|| "A".to_string())),
            interval: None,
        }),
    )
    .unwrap();
    for worker in 0..2 {
        let mut w = WorkerHists::new(1);
        for _ in 0..10 {
            w.record(Some(0), 200, 100, 200, false);
        }
        agg.tx
            .send(w.take(worker, Instant::now(), &crossbeam_channel::never()))
            .unwrap();
    }
    let summary = agg.summary.clone();
    let files = agg.finish().unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"round-robin_persistent.hlog".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"round-robin_persistent_total.hgrm".to_string()));
    assert!(names.contains(&"round-robin_persistent_backend-A.hgrm".to_string()));
    assert_eq!(summary.lock().unwrap().since_start_total.len(), 20);
    assert_eq!(summary.lock().unwrap().codes[0][code_index(200)], 20);
    let hgrm = std::fs::read_to_string(dir.join("round-robin_persistent_total.hgrm")).unwrap();
    assert!(hgrm.contains("Total count    =           20"), "{hgrm}");
    let hlog = std::fs::read_to_string(dir.join("round-robin_persistent.hlog")).unwrap();
    assert!(hlog.contains("Tag=total,"), "{hlog}");
    assert!(hlog.contains("Tag=backend-A,"));
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "corelb-metrics-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

//! Graceful shutdown with inference busy: SIGTERM stores the batch in hand, acknowledges it,
//! hands back what was pulled but not started, and exits within 10 s; a second signal
//! exits at once. (Open clips being stored on SIGTERM is checked in tests/ingest.rs.)

mod common;

use std::time::{Duration, Instant};

use common::services::NatsServer;
use common::{Panoptes, Replay, fixtures, models, wait_for};

/// More cameras, sampled more often, than two cores can analyse: the worker always has a
/// batch in hand and a backlog behind it.
fn busy_cameras(replay: &Replay) -> String {
    (0..4)
        .map(|i| {
            let mount = if i % 2 == 0 { "lobby" } else { "photos" };
            format!(
                "[[cameras]]\nid = \"cam{i}\"\nurl = \"{}\"\n\n",
                replay.url(&format!("{mount}-{}", i / 2))
            )
        })
        .collect()
}

const BUSY: &str = "[sampling]\ninterval = \"1s\"\n\n[infer]\nenabled = true\nbatch = 4\n";

fn start_busy(replay: &Replay, bus: &str) -> Panoptes {
    let models = models();
    let p = Panoptes::start_env(
        &format!("{bus}{BUSY}"),
        &busy_cameras(replay),
        &[("PANOPTES_MODELS", models.to_str().unwrap())],
    );
    wait_for(Duration::from_secs(90), "frames analysed", || {
        (p.metric("panoptes_infer_frames_total") >= 4.0).then_some(())
    });
    p
}

/// Delivery counts of the infer worker's durable consumer on FRAMES.
#[derive(Debug)]
struct ConsumerState {
    ack_pending: usize,
    delivered: u64,
}

fn frames_consumer(url: &str) -> ConsumerState {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("FRAMES").await.unwrap();
        let mut consumer: async_nats::jetstream::consumer::Consumer<
            async_nats::jetstream::consumer::pull::Config,
        > = stream.get_consumer("infer").await.unwrap();
        let info = consumer.info().await.unwrap();
        ConsumerState {
            ack_pending: info.num_ack_pending,
            delivered: info.delivered.stream_sequence,
        }
    })
}

#[test]
fn sigterm_with_inference_busy_acks_or_hands_back_everything_it_took() {
    let fx = fixtures();
    let nats = NatsServer::start();
    let replay = Replay::start(&[fx.join("lobby.mp4"), fx.join("photos.mp4")], 2);
    let bus = format!("[bus]\nkind = \"nats\"\nurl = \"{}\"\n\n", nats.url());
    let mut p = start_busy(&replay, &bus);
    let analysed = p.metric("panoptes_infer_frames_total");
    let started = Instant::now();
    p.terminate();
    let status = p
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("not stopped within 10 s:\n{}", p.output.text()));
    let secs = started.elapsed().as_secs_f64();
    let log = p.output.text();
    assert!(status.success(), "exit {status} after SIGTERM:\n{log}");
    assert!(log.contains("frame consumer stopped"), "{log}");

    let state = frames_consumer(&nats.url());
    eprintln!(
        "stopped in {secs:.1} s after {analysed} frames analysed; consumer {state:?}; {}",
        log.lines()
            .filter(|l| l.contains("frame consumer stopped") || l.contains("batch in hand"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert!(state.delivered > 0, "the worker took nothing: {state:?}");
    // Every frame the worker took was either analysed, stored and acknowledged, or handed
    // back for another worker: none waits out ack_wait on a stopped process.
    assert_eq!(
        state.ack_pending, 0,
        "frames left unacknowledged by a clean stop: {state:?}\n{log}"
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let fx = fixtures();
    let replay = Replay::start(&[fx.join("lobby.mp4"), fx.join("photos.mp4")], 2);
    let mut p = start_busy(&replay, "");
    p.terminate();
    // The first signal starts an orderly stop (cameras, clips, the batch being analysed),
    // which takes 100 ms or more even when idle: watch for its first line closely and send
    // the second signal at once.
    let begun = Instant::now();
    while !p.output.text().contains("shutting down") {
        assert!(
            begun.elapsed() < Duration::from_secs(5),
            "the orderly stop did not begin:\n{}",
            p.output.text()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = Instant::now();
    p.terminate();
    let status = p.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "a second SIGTERM did not end the process:\n{}",
            p.output.text()
        )
    });
    let secs = second.elapsed().as_secs_f64();
    let log = p.output.text();
    assert!(
        log.contains("second signal: exiting at once"),
        "the orderly stop ended before the second signal arrived, or it was ignored \
         (exit {status}, {secs:.2} s):\n{log}"
    );
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(secs < 2.0, "{secs:.2} s after the second signal");
}

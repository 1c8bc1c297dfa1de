//! The NATS JetStream bus against a real `nats-server`: delivery and acks, dedup by
//! `Nats-Msg-Id`, dead letters after `max_deliver`, a server restart, and the payload check.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::services::NatsServer;
use panoptes::bus::{Bus, BusError, StreamKind, nats};
use panoptes::config::{self, Config};

fn config(url: &str, extra: &str) -> Config {
    let text = format!(
        "[bus]\nkind = \"nats\"\nurl = \"{url}\"\nmax_deliver = 2\nack_wait = \"1s\"\n{extra}"
    );
    config::load_str(&text, "test.toml", &|_| None).unwrap()
}

fn frame(camera: &str, n: u32) -> (String, Vec<(String, String)>, Bytes) {
    (
        StreamKind::Frames.subject(camera),
        vec![
            ("camera".into(), camera.into()),
            ("Nats-Msg-Id".into(), format!("{camera}:{n}")),
        ],
        Bytes::from(format!("jpeg {n}")),
    )
}

async fn publish(bus: &Bus, camera: &str, n: u32) -> Result<(), BusError> {
    let (s, h, p) = frame(camera, n);
    bus.publish(s, h, p).await.map(|_| ())
}

/// Dead letters as stored on the DLQ stream: (subject, headers) of the newest.
async fn last_dead_letter(
    url: &str,
    kind: &str,
) -> Option<async_nats::jetstream::message::StreamMessage> {
    let client = async_nats::connect(url).await.ok()?;
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(nats::DLQ_STREAM).await.ok()?;
    stream
        .get_last_raw_message_by_subject(&format!("panoptes.dlq.{kind}"))
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_bus_delivers_dead_letters_and_survives_a_restart() {
    let mut server = NatsServer::start();
    let url = server.url();
    let bus = Bus::connect(&config(&url, "")).await.unwrap();
    assert!(bus.is_ready());

    // Delivery with explicit ack; the same Nats-Msg-Id twice is stored once.
    for n in 0..3 {
        publish(&bus, "lobby", n).await.unwrap();
    }
    publish(&bus, "lobby", 2).await.unwrap();
    let mut infer = bus.consumer(StreamKind::Frames, "infer").await.unwrap();
    let mut got = Vec::new();
    while let Some(d) = infer.next(Duration::from_secs(2)).await {
        assert_eq!(d.message().header("camera"), Some("lobby"));
        got.push(d.message().payload.clone());
        d.ack().await.unwrap();
    }
    assert_eq!(
        got,
        (0..3)
            .map(|n| Bytes::from(format!("jpeg {n}")))
            .collect::<Vec<_>>()
    );

    // A live feed sees what is published after it starts, without acks.
    let mut live = bus.live(StreamKind::Insights).await.unwrap();
    bus.publish(
        StreamKind::Insights.subject("lobby"),
        vec![("camera".into(), "lobby".into())],
        Bytes::from_static(b"{}"),
    )
    .await
    .unwrap();
    let d = live
        .next(Duration::from_secs(5))
        .await
        .expect("a live message");
    assert_eq!(d.message().subject, "panoptes.insights.lobby");
    d.ack().await.unwrap();

    // A message that fails every time goes to the DLQ after max_deliver (2) tries.
    publish(&bus, "dock", 10).await.unwrap();
    let mut tries = 0;
    while let Some(d) = infer.next(Duration::from_secs(5)).await {
        tries += 1;
        assert_eq!(d.delivery_count(), tries);
        d.nak("decoder exploded").await.unwrap();
        if tries == 2 {
            break;
        }
    }
    assert_eq!(tries, 2);
    assert!(
        infer.next(Duration::from_secs(3)).await.is_none(),
        "a dead-lettered message is not delivered again"
    );
    let dead = last_dead_letter(&url, "frames")
        .await
        .expect("a dead letter");
    assert_eq!(dead.payload, Bytes::from("jpeg 10"));
    let h = dead.headers.clone();
    assert_eq!(h.get("error").map(|v| v.as_str()), Some("decoder exploded"));
    assert_eq!(h.get("delivery-count").map(|v| v.as_str()), Some("2"));
    assert_eq!(
        h.get("original-subject").map(|v| v.as_str()),
        Some("panoptes.frames.dock")
    );

    // One never acknowledged (its worker hangs) is dead-lettered too.
    publish(&bus, "gate", 20).await.unwrap();
    for _ in 0..2 {
        let d = infer.next(Duration::from_secs(5)).await.expect("delivery");
        assert_eq!(d.message().payload, Bytes::from("jpeg 20"));
        drop(d);
    }
    assert!(infer.next(Duration::from_secs(4)).await.is_none());
    let dead = last_dead_letter(&url, "frames").await.unwrap();
    assert_eq!(dead.payload, Bytes::from("jpeg 20"));
    assert!(
        dead.headers
            .get("error")
            .is_some_and(|e| e.as_str().contains("not acknowledged")),
        "{:?}",
        dead.headers
    );

    // A server restart: what was stored survives, publishes while it is down are refused
    // (the edge counts them as dropped), and the bus comes back on its own.
    for n in 30..35 {
        publish(&bus, "yard", n).await.unwrap();
    }
    server.kill();
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match publish(&bus, "yard", 99).await {
                Err(BusError::Unavailable(_)) => return true,
                Ok(()) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(refused, "a publish while NATS is down is refused");
    assert!(!bus.is_ready());
    server.start_again();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !bus.is_ready() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("reconnected");
    publish(&bus, "yard", 35).await.unwrap();
    // At least once: the killed server may not have written down its acks and
    // deliveries, so after the restart some messages come again, and one sent into a
    // pull the restart cut off comes back after ack_wait: nothing is lost, but the order
    // across the restart is not the stream's. A "jpeg 99" the server stored just before it
    // died is delivered too; it is not part of the count.
    let want: Vec<Bytes> = (30..36).map(|n| Bytes::from(format!("jpeg {n}"))).collect();
    let mut yard: Vec<Bytes> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while !want.iter().all(|w| yard.contains(w)) && std::time::Instant::now() < deadline {
        let Some(d) = infer.next(Duration::from_secs(10)).await else {
            break;
        };
        let p = d.message().payload.clone();
        if d.message().subject == "panoptes.frames.yard" && want.contains(&p) && !yard.contains(&p)
        {
            yard.push(p);
        }
        let _ = d.ack().await;
    }
    yard.sort();
    assert_eq!(
        yard, want,
        "every frame stored before the restart, and the one after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_larger_than_max_payload_are_refused_at_startup() {
    // The server's default max_payload is 1 MB; 4K frames can be larger.
    let server = NatsServer::start_with(None);
    let c = config(
        &server.url(),
        "[sampling]\nmax_width = 3840\nmax_height = 2160\n",
    );
    let err = match Bus::connect(&c).await {
        Ok(_) => panic!("connected although frames may exceed max_payload"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("max_payload"), "{err}");
    assert!(err.contains("1048576"), "{err}");
    // The defaults (1280x720) fit.
    assert!(Bus::connect(&config(&server.url(), "")).await.is_ok());
}

//! End to end: replayed cameras -> `panoptes run` on the embedded defaults (real models,
//! SQLite store) -> what the HTTP API answers about what the cameras saw and heard.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::flow::{self, all_ids};
use common::{Panoptes, Replay, fixtures, models, wait_for};

#[test]
fn cameras_in_answers_out() {
    let fx = fixtures();
    let replay = Replay::start(&[fx.join("lobby.mp4"), fx.join("photos.mp4")], 1);
    let models = models();
    let cameras = format!(
        "[[cameras]]\nid = \"lobby\"\nurl = \"{}\"\n\n[[cameras]]\nid = \"photos\"\nurl = \"{}\"\n",
        replay.url("lobby"),
        replay.url("photos")
    );
    let extra = "[sampling]\ninterval = \"2s\"\n\n[recording]\nsegment = \"4s\"\n\n[infer]\nenabled = true\n";
    let mut p = Panoptes::start_env(
        extra,
        &cameras,
        &[("PANOPTES_MODELS", models.to_str().unwrap())],
    );

    flow::check_answers(&p, &p, &fx);

    // A restart loses nothing and duplicates nothing.
    let before = all_ids(&p);
    p.restart();
    wait_for(
        Duration::from_secs(60),
        "new insights after the restart",
        || (all_ids(&p).len() > before.len()).then_some(()),
    );
    let after = all_ids(&p);
    let unique: HashSet<&String> = after.iter().collect();
    assert_eq!(unique.len(), after.len(), "an id is listed twice");
    let missing: Vec<&String> = before.iter().filter(|id| !unique.contains(id)).collect();
    assert!(missing.is_empty(), "lost in the restart: {missing:?}");
}

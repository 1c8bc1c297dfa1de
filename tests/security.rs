//! API keys, the per-client rate limit and the body limit, against a real `panoptes run`.

mod common;

use common::{Panoptes, Replay, fixtures};

const KEY: &str = "test-key-5f1d8a0c7e3b49d2";

fn call(
    p: &Panoptes,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: usize,
) -> (u16, String, Option<String>) {
    let url = format!("{}{path}", p.base);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(common::HTTP_TIMEOUT))
        .build()
        .into();
    let resp = if method == "POST" {
        let mut r = agent.post(&url);
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.send(vec![b'x'; body])
    } else {
        let mut r = agent.get(&url);
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.call()
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("www-authenticate")
        .or_else(|| resp.headers().get("retry-after"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, text, retry)
}

#[test]
fn api_keys_guard_v1_and_metrics_and_clients_are_limited() {
    let fx = fixtures();
    let replay = Replay::start(&[fx.join("lobby.mp4")], 1);
    let cameras = format!(
        "[[cameras]]\nid = \"lobby\"\nurl = \"{}\"\n",
        replay.url("lobby")
    );
    let extra = "[api]\nkeys = [\"${PANOPTES_API_KEY}\"]\nrate_limit = 20\nmax_body = 1024\n";
    let p = Panoptes::start_env(extra, &cameras, &[("PANOPTES_API_KEY", KEY)]);
    let bearer = format!("Bearer {KEY}");

    // Open: liveness, readiness, the API description.
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(call(&p, "GET", path, None, 0).0, 200, "{path}");
    }
    // Guarded: every /v1 route and /metrics.
    for path in ["/v1/cameras", "/v1/cameras/lobby", "/v1/clips", "/metrics"] {
        let (status, body, challenge) = call(&p, "GET", path, None, 0);
        assert_eq!(status, 401, "{path} without a key");
        assert!(body.contains("\"unauthorized\""), "{path}: {body}");
        assert_eq!(challenge.as_deref(), Some("Bearer realm=\"panoptes\""));
        assert_eq!(
            call(&p, "GET", path, Some("Bearer wrong-key-000000000000"), 0).0,
            401
        );
        assert_eq!(
            call(&p, "GET", path, Some(&bearer), 0).0,
            200,
            "{path} with the key"
        );
    }
    // Images, video and event streams cannot send headers: the key may ride in the query.
    assert_eq!(
        call(
            &p,
            "GET",
            &format!("/v1/cameras?access_token={KEY}"),
            None,
            0
        )
        .0,
        200
    );

    // Bodies above api.max_body are refused before anything reads them.
    assert_eq!(call(&p, "POST", "/v1/cameras", Some(&bearer), 4096).0, 413);

    // One client sending far above api.rate_limit gets 429 with Retry-After, in the API's
    // error shape.
    let mut limited = None;
    for _ in 0..200 {
        let (status, body, retry) = call(&p, "GET", "/v1/cameras", Some(&bearer), 0);
        if status == 429 {
            limited = Some((body, retry));
            break;
        }
    }
    let (body, retry) = limited.expect("no 429 after 200 requests at full speed");
    assert!(body.contains("\"rate_limited\""), "{body}");
    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok()));

    // The key never shows up in what panoptes printed.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!p.output.text().contains(KEY), "the API key was logged");
}

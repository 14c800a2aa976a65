//! The backend's deliberate errors are recognised as such by the load
//! generator, and a stopped backend's failures are not.

use std::time::Duration;

use demo::backend::{Behaviour, Instance};
use demo::load::{LoadPlan, run};

#[tokio::test]
async fn deliberate_errors_are_counted_apart_from_real_failures() {
    let instance = Instance::start(
        "web-1".to_owned(),
        "127.0.0.1".parse().expect("ip"),
        Behaviour {
            error_ratio: 0.5,
            ..Behaviour::default()
        },
    )
    .await
    .expect("backend starts");
    let url = format!("http://{}/", instance.addr).parse().expect("url");
    let report = run(LoadPlan {
        url,
        requests_per_second: 200,
        duration: Duration::from_millis(500),
        max_in_flight: 16,
        timeout: Duration::from_secs(2),
    })
    .await;
    assert!(report.sent >= 50, "{}", report.summary());
    assert_eq!(report.failed(), 0, "{}", report.summary());
    assert!(report.deliberate_errors > 0, "{}", report.summary());
    assert!(report.ok > 0, "{}", report.summary());

    let addr = instance.addr;
    instance.stop(Duration::from_secs(1)).await;
    let report = run(LoadPlan {
        url: format!("http://{addr}/").parse().expect("url"),
        requests_per_second: 50,
        duration: Duration::from_millis(200),
        max_in_flight: 4,
        timeout: Duration::from_secs(1),
    })
    .await;
    assert_eq!(report.ok, 0);
    assert_eq!(report.failed(), report.sent, "{}", report.summary());
}

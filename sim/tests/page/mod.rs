//! What every page of a run must be (shared by the html and scenario tests).

use mini_pubsub_sim::{html, runner};

/// The JSON the page draws from.
pub fn data(page: &str) -> serde_json::Value {
    let start = page.find(r#"<script id="data" type="application/json">"#).expect("the data island") + 42;
    let end = start + page[start..].find("</script>").expect("the data island ends");
    serde_json::from_str(&page[start..end]).unwrap_or_else(|e| panic!("the data is JSON: {e}"))
}

/// Checks what every page must be: complete, self-contained, and drawing the whole run.
pub fn assert_page(report: &runner::Report, page: &str) {
    assert!(page.starts_with("<!DOCTYPE html>\n") && page.trim_end().ends_with("</html>"));
    for external in [" src=", " href=", "@import", "url(", "https://"] {
        assert!(!page.contains(external), "the page loads nothing from outside: found `{external}`");
    }
    // The one http:// is the SVG namespace, an identifier that is never fetched.
    assert_eq!(page.matches("http://").count(), page.matches("http://www.w3.org/2000/svg").count());
    let data = data(page);
    let lanes: Vec<&str> = data["lanes"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    for entry in &report.entries {
        assert!(lanes.contains(&entry.host.as_str()), "{} has a lane", entry.host);
    }
    let drawn = report.entries.iter().filter(|e| html::drawn(e)).count();
    assert_eq!(data["events"].as_array().unwrap().len(), drawn, "every drawn event is in the data");
    assert_eq!(data["checks"].as_array().unwrap().len(), report.checks.len());
    assert_eq!(data["spans"].as_array().unwrap().len(), report.spans.len());
    assert_eq!(data["passed"].as_bool(), Some(report.passed));
    assert_eq!(data["trace"].as_str(), Some(report.trace.as_str()));
}

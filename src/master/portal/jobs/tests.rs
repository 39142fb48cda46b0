//! The job pages' form parsing, field marking and task layout, rendered as users see them.

use super::super::tests::render_page;
use super::*;

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_form_becomes_the_api_request_and_names_the_field_it_cannot_read() {
    let form = JobForm::parse(pairs(&[
        ("csrf", "t"),
        ("name", "sweep"),
        ("priority", "5"),
        ("tasks[0].name", "prep"),
        ("tasks[0].script", "echo hi\r\nls"),
        ("tasks[0].cpu", "0.5"),
        ("tasks[0].memory", "256"),
        ("tasks[0].env", "A=1\nB=x=y\n"),
        ("tasks[1].name", "run"),
        ("tasks[1].depends_on", "prep"),
        ("tasks[1].command", "python3\n-c\nprint(1)\n"),
        ("tasks[1].array", "0-9%2"),
        ("tasks[1].timeout", "10m"),
        ("tasks[2].name", ""),
        ("tasks[9999].name", "ignored"),
        ("action", "check"),
    ]));
    assert_eq!((form.action.as_str(), form.csrf.as_str()), ("check", "t"));
    assert_eq!(form.tasks.len(), 3);
    let request = form.request().unwrap();
    assert_eq!(request.priority, Some(5));
    // The empty third task is left out.
    assert_eq!(request.tasks.len(), 2);
    let prep = &request.tasks[0];
    assert_eq!(prep.script.as_deref(), Some("echo hi\nls"));
    assert_eq!(prep.cpu_millis, Some(500));
    assert_eq!(prep.memory_bytes, Some(256 << 20));
    assert_eq!(prep.env["B"], "x=y");
    let run = &request.tasks[1];
    assert_eq!(run.depends_on, ["prep"]);
    assert_eq!(
        run.command,
        Some(serde_json::json!(["python3", "-c", "print(1)"]))
    );
    // What the spec refuses is the spec's business; what is not a number is the form's.
    let bad = JobForm::parse(pairs(&[("tasks[0].name", "a"), ("tasks[0].cpu", "lots")]));
    let (field, message) = bad.request().unwrap_err();
    assert_eq!(field, "tasks[0].cpu");
    assert!(message.contains("\"lots\""), "{message}");
    let bad = JobForm::parse(pairs(&[
        ("tasks[0].name", "a"),
        ("tasks[0].env", "NOEQUALS"),
    ]));
    assert_eq!(bad.request().unwrap_err().0, "tasks[0].env");
    assert_eq!(form_field("tasks[3].memory_bytes"), "tasks[3].memory");
    assert_eq!(form_field("tasks[0].depends_on"), "tasks[0].depends_on");
}

#[test]
fn a_refused_form_comes_back_as_typed_with_its_field_marked() {
    let form = JobForm::parse(pairs(&[
        ("name", "<b>mine</b>"),
        ("tasks[0].name", "a"),
        ("tasks[0].depends_on", "nowhere"),
        ("tasks[0].script", "echo '<script>'"),
    ]));
    let html = render_page(
        "job_new.html",
        false,
        minijinja::context! {
            form => form,
            invalid => "tasks[0].depends_on",
            images => ["alice/tools"],
            default_image => "base",
            defaults => crate::model::quota::NodeSize { cpu_millis: 1000, memory_bytes: 1 << 30, disk_bytes: 10 << 30 },
            max_tasks => 64,
        },
    );
    assert!(html.contains("&lt;b&gt;mine&lt;/b&gt;"), "{html}");
    assert!(html.contains("echo &#x27;&lt;script&gt;&#x27;"), "{html}");
    assert!(
        html.contains(r#"name="tasks[0].depends_on" value="nowhere" aria-invalid="true""#),
        "{html}"
    );
    assert!(!html.contains(r#"name="tasks[0].name" value="a" aria-invalid"#));
    assert!(html.contains("<option>alice/tools</option>"), "{html}");
}

#[test]
fn tasks_are_laid_out_by_how_deep_their_dependencies_go() {
    let request: JobRequest = serde_json::from_value(serde_json::json!({
        "name": "dag",
        "tasks": [
            {"name": "report", "command": ["x"], "depends_on": ["left", "right"]},
            {"name": "left", "command": ["x"], "depends_on": ["prep"]},
            {"name": "prep", "command": ["x"]},
            {"name": "right", "command": ["x"], "depends_on": ["prep"]},
        ]
    }))
    .unwrap();
    let spec = request
        .resolve(
            1,
            &crate::model::quota::NodeSize {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                disk_bytes: 10 << 30,
            },
            "base",
        )
        .unwrap();
    let job = JobView {
        summary: JobSummary {
            id: 1,
            name: "dag".into(),
            user: "alice".into(),
            group: "g".into(),
            state: crate::model::jobs::State::Running,
            reason: None,
            submitted_at: 0,
            ended_at: None,
            held: false,
            counts: Default::default(),
            position: None,
            eta: None,
        },
        tasks: spec
            .tasks
            .iter()
            .map(|t| crate::master::actions::jobs::TaskView {
                name: t.name.clone(),
                depends_on: t.depends_on.clone(),
                state: crate::model::jobs::State::Waiting,
                instances: Vec::new(),
            })
            .collect(),
        spec,
    };
    let names: Vec<Vec<&str>> = levels(&job)
        .into_iter()
        .map(|l| l.into_iter().map(|i| job.tasks[i].name.as_str()).collect())
        .collect();
    assert_eq!(
        names,
        vec![vec!["prep"], vec!["left", "right"], vec!["report"]]
    );
    let html = render_page("job.html", false, job_context(&job, false, true));
    assert!(html.contains(r#"data-task="report""#), "{html}");
    assert!(html.contains("/jobs/1/cancel"), "{html}");
    // Another user's admin view has no cancel only when the job ended.
    let mut ended = job.clone();
    ended.summary.ended_at = Some(5);
    let html = render_page("job.html", true, job_context(&ended, true, false));
    assert!(!html.contains("/jobs/1/cancel"), "{html}");
}

use super::*;

#[test]
fn roundtrip_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(RuntimeState::load(dir.path()).unwrap(), RuntimeState::new());
    let mut st = RuntimeState::new();
    st.paused = true;
    st.added_to("web").insert("vm1".into());
    st.save(dir.path()).unwrap();
    assert_eq!(RuntimeState::load(dir.path()).unwrap(), st);

    std::fs::write(dir.path().join(STATE_FILE), "{\"version\": 1, \"pau").unwrap();
    let e = RuntimeState::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("state.json") && e.contains("--reset-state"),
        "{e}"
    );
    std::fs::write(dir.path().join(STATE_FILE), "{\"version\": 99}").unwrap();
    let e = RuntimeState::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("version 99"), "{e}");
    let aside = RuntimeState::reset(dir.path()).unwrap().unwrap();
    assert!(aside.exists());
    assert_eq!(RuntimeState::load(dir.path()).unwrap(), RuntimeState::new());
}

/// A config pool renamed leaves entries naming the old name: they are
/// left out and returned as problems; the rest applies, a paused pool
/// stays paused.
#[test]
fn effective_applies_what_fits_and_returns_the_rest() {
    let cfg = Config::parse(
        "[pools.web]\nmatch = \"web-*\"\nvcpus = { budget = 8 }\n[pools.db]\ndomains = [\"db-1\"]\nvcpus = { budget = 4 }\n",
        Path::new("/etc/virtpool/virtpool.toml"),
    )
    .unwrap();
    let spec = |j: &str| -> PoolSpec { serde_json::from_str(j).unwrap() };
    let mut st = RuntimeState::new();
    st.paused_pools.insert("web".into());
    st.paused_pools.insert("jobs".into());
    st.added_to("jobs").insert("batch-1".into());
    st.added_to("web")
        .extend(["extra".to_string(), "db-1".to_string()]);
    st.removed_from("gone").insert("x".into());
    st.reservations_in("gone")
        .insert("y".into(), PerResource::default());
    st.pools
        .insert("db".into(), spec(r#"{"vcpus": {"budget": 1}}"#));
    st.pools.insert(
        "spare".into(),
        spec(r#"{"domains": ["db-1", "s-1"], "vcpus": {"budget": 1}}"#),
    );
    let eff = st.effective(&cfg);
    let c = &eff.config;
    assert!(c.pools["web"].paused, "the paused pool stays paused");
    assert_eq!(c.pools["web"].domains, vec!["extra"]);
    assert_eq!(c.pools["spare"].domains, vec!["s-1"]);
    assert!(c.pools["spare"].runtime && !c.pools["db"].runtime);
    let conflict = |first: &str, second: &str| {
        StateProblem::Conflict(config::MembershipConflict {
            domain: "db-1".into(),
            first: first.into(),
            second: second.into(),
        })
    };
    assert_eq!(
        eff.problems,
        vec![
            StateProblem::NameTaken { pool: "db".into() },
            conflict("db", "spare"),
            StateProblem::AddedToMissingPool {
                pool: "jobs".into(),
                domains: vec!["batch-1".into()]
            },
            conflict("db", "web"),
            StateProblem::RemovedFromMissingPool {
                pool: "gone".into(),
                domains: vec!["x".into()]
            },
            StateProblem::ReservationsInMissingPool {
                pool: "gone".into(),
                domains: vec!["y".into()]
            },
            StateProblem::PauseOfMissingPool {
                pool: "jobs".into()
            },
        ]
    );
    let text = eff.clone().strict().unwrap_err().to_string();
    assert!(
        text.contains(r#"1 domain(s) added to pool "jobs", which does not exist ("batch-1")"#)
            && text.contains(r#"domain "db-1" is listed in pool "db" and pool "web""#),
        "{text}"
    );
    assert_eq!(eff.problems[2].pool(), "jobs");
    assert!(RuntimeState::new().effective(&cfg).strict().is_ok());
}

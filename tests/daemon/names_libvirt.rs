//! Every domain name libvirt accepts works everywhere a domain is named: a
//! property test over names drawn from what libvirt takes (spaces, accents,
//! CJK, emoji, quotes, `%`, `?`, `#`, `&`, `<`, `\`, `.` and `..`), defined
//! on the test driver of a private `libvirtd`, then named to the real
//! `virtpoold` through the API (`GET /v1/domains/NAME` percent-encoded)
//! and through `virtpoolctl` (`domain`, `pool add`, `allocate`, `release`,
//! `pool remove`).
//!
//! 24 cases of 1–4 names each (about 10 s); `VIRTPOOL_NAME_CASES=N` runs
//! N.
#![allow(clippy::unwrap_used)]

use crate::support::blackbox::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use std::time::Duration;

const POOLS: &str = r#"
[pools.spare]
vcpus = { budget = 32 }
memory = { budget = "32GiB" }
"#;

/// A name libvirt's test driver takes (and the QEMU driver too, but for
/// `.` and `..`): no `/`, no control character, short.
fn libvirt_name() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        4 => prop::char::range('a', 'z'),
        1 => prop::char::range('A', 'Z'),
        1 => prop::char::range('0', '9'),
        2 => prop::sample::select(vec![
            ' ', '-', '_', '.', '%', '?', '#', '&', '<', '>', '\'', '"', '\\', '+', '*', '~', ':',
            '=', ',', '[', ']', '{', '}', '!', '$', '@', '\u{a0}', '\u{200b}',
        ]),
        1 => prop::char::range('à', 'ÿ'),
        1 => prop::char::range('α', 'ω'),
        1 => prop::char::range('一', '龥'),
        1 => prop::sample::select(vec!['😀', '🦀', 'ß', 'ø', 'Ω', 'ł']),
    ];
    let random = prop::collection::vec(ch, 1..24).prop_map(String::from_iter);
    prop_oneof![
        8 => random,
        1 => prop::sample::select(vec![
            "web with spaces".to_string(),
            "web-ünïcödé".to_string(),
            ".".to_string(),
            "..".to_string(),
            " lead and trail ".to_string(),
            "a%2Fb".to_string(),
        ]),
    ]
    .prop_filter("a name libvirt takes", |s| {
        // libvirt refuses '/' and a newline; the agent leaves names with
        // control characters to their UUIDs; "test" is the driver's own.
        !s.contains('/') && !s.chars().any(char::is_control) && s.len() <= 255 && s != "test"
    })
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// Every byte but letters, digits and `-_.~` percent-encoded (and the dots
/// of `.` and `..`).
fn enc(s: &str) -> String {
    let dots = s == "." || s == "..";
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_~".contains(&b) || (b == b'.' && !dots) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn domain_xml(name: &str, uuid: &str) -> String {
    format!(
        "<domain type='test'><name>{}</name><uuid>{uuid}</uuid>\
         <memory unit='MiB'>2048</memory><currentMemory unit='MiB'>1024</currentMemory>\
         <vcpu placement='static' current='1'>4</vcpu>\
         <os><type arch='x86_64'>hvm</type></os>\
         <devices><memballoon model='virtio'/></devices></domain>",
        xml_escape(name)
    )
}

fn ok(sock: &std::path::Path, args: &[&str]) -> String {
    let (code, out, err) = ctl(sock, args);
    assert_eq!(code, Some(0), "virtpoolctl {args:?}: {out}{err}");
    out
}

#[test]
fn every_name_libvirt_takes_works_through_the_api_and_the_cli() {
    let Some((dir, lv, h)) = private_host("names") else {
        return;
    };
    let text = config_text(dir.path(), &lv.uri(), "1s", POOLS);
    let (cfg_path, _) = write_config(dir.path(), &text);
    let mut agent = Agent::start_serving(dir.path(), &cfg_path);
    let sock = agent.socket.clone();

    let cases = std::env::var("VIRTPOOL_NAME_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(PropConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 16,
        ..PropConfig::default()
    });
    let serial = std::sync::atomic::AtomicU64::new(0);
    let names = prop::collection::btree_set(libvirt_name(), 1..5);
    let result = runner.run(&names, |names| {
        eprintln!("names: {names:?}");
        let mut defined = Vec::new();
        for name in &names {
            let n = serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            h.define(&domain_xml(name, &uuid(4242, n)));
            h.start(name);
            defined.push(name.clone());
        }
        let check = || {
            for name in &names {
                // The agent sees it (a lifecycle event or the next tick).
                let path = format!("/v1/domains/{}", enc(name));
                let seen = poll(Duration::from_secs(20), || {
                    let r = get(&sock, &path);
                    (r.status == 200).then(|| r.json())
                });
                let v = seen.unwrap_or_else(|| {
                    panic!("GET {path} for {name:?}: {}", get(&sock, &path).body)
                });
                assert_eq!(v["name"], *name, "{v}");
                // The command line, each place a domain is named.
                // Options first, names after `--` (a name may start
                // with '-').
                let out = ok(&sock, &["--json", "domain", "--", name]);
                let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                assert_eq!(v["name"], *name);
                ok(&sock, &["pool", "add", "--wait", "--", "spare", name]);
                let v = get(&sock, &path).json();
                assert_eq!(v["pool"], "spare", "{name:?}: {v}");
                let out = ok(
                    &sock,
                    &["--json", "allocate", "--vcpus", "1", "--", "spare", name],
                );
                let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                assert_eq!(
                    (&v["domain"], &v["reservation"]["vcpus"]),
                    (&serde_json::json!(name), &serde_json::json!(1))
                );
                ok(&sock, &["release", "--", "spare", name]);
                ok(
                    &sock,
                    &["events", "--limit", "1", &format!("--domain={name}")],
                );
                ok(&sock, &["pool", "remove", "--wait", "--", "spare", name]);
                let v = get(&sock, &path).json();
                assert_eq!(v["pool"], serde_json::Value::Null, "{name:?}: {v}");
            }
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
        for name in &defined {
            let _ = h.dom(name).destroy();
            let _ = h.dom(name).undefine();
        }
        match outcome {
            Ok(()) => Ok(()),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(TestCaseError::fail(msg))
            }
        }
    });
    agent.assert_alive();
    if let Err(e) = result {
        panic!("{e}\n--- agent log ---\n{}", agent.log_text());
    }
}

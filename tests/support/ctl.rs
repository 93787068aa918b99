//! `virtpoolctl` run against an agent's socket, as this user or another.

use std::path::{Path, PathBuf};

/// What a `virtpoolctl` run gave back.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn ctl_path() -> PathBuf {
    assert_cmd::cargo::cargo_bin("virtpoolctl")
}

/// `virtpoolctl --socket <socket> <args>`, as `user` (uid, gid) when given.
pub async fn ctl_as(socket: &Path, user: Option<(u32, u32)>, args: &[&str]) -> Out {
    let mut cmd = match user {
        None => tokio::process::Command::new(ctl_path()),
        Some((uid, gid)) => {
            let mut c = tokio::process::Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(ctl_path());
            c
        }
    };
    let out = cmd
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("VIRTPOOL_SOCKET")
        .output()
        .await
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

pub async fn ctl(socket: &Path, args: &[&str]) -> Out {
    ctl_as(socket, None, args).await
}

/// The standard output of a run that must exit 0.
pub async fn ok(socket: &Path, args: &[&str]) -> String {
    let o = ctl(socket, args).await;
    assert_eq!(o.code, 0, "{args:?}: {}{}", o.stdout, o.stderr);
    o.stdout
}

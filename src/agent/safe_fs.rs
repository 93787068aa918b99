//! The files the agent writes — in `state_dir` (`state.json`,
//! `vcpu-holds.json`, `audit.jsonl`) and beside the API socket (its lock
//! file) — opened so that another local user cannot redirect a write:
//!
//! - A directory is used only if it is owned by the agent's effective user
//!   and nobody else may write to it, and every directory above it is owned
//!   by root or that user and writable by nobody else unless it is sticky
//!   (like `/tmp`): [`ensure_dir`], [`check_dir`]. Nobody else can then
//!   plant a link or a file in it.
//! - Files are opened with `O_NOFOLLOW` (a symbolic link is refused, never
//!   followed) and `O_NONBLOCK` (a FIFO cannot hang the agent), and used
//!   only if they are regular files of the agent's user with one link.
//!   Reads are bounded in size ([`read_regular`]).
//! - Files are created with mode 0600 and directories with the mode asked
//!   for, whatever the umask. A file is replaced atomically through a temp
//!   file created with `O_CREAT|O_EXCL|O_NOFOLLOW` ([`write_atomic`]); a
//!   leftover temp file (or a link planted there) is removed first, never
//!   written through.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the files the agent creates.
pub const FILE_MODE: u32 = 0o600;

/// A directory the agent will not keep files in.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{path}: {problem}: refusing to use it")]
    Unsafe { path: PathBuf, problem: String },
    #[error(transparent)]
    Io(#[from] PathIoError),
}

/// A file system call (`what`, e.g. "inspect the directory") on `path`
/// failed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot {what}: {source}")]
pub struct PathIoError {
    pub path: PathBuf,
    pub what: &'static str,
    #[source]
    pub source: std::io::Error,
}

impl PathIoError {
    /// `source`, the error of `what` on `path`.
    pub fn new(path: &Path, what: &'static str, source: std::io::Error) -> PathIoError {
        PathIoError {
            path: path.to_owned(),
            what,
            source,
        }
    }
}

/// A file the agent will not use, or could not open.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Not a file the agent may use: a symbolic link, a FIFO or other
    /// special file, another user's file, a hard link, too big.
    #[error("{0}")]
    Unsafe(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<FileError> for std::io::Error {
    fn from(e: FileError) -> std::io::Error {
        match e {
            FileError::Io(e) => e,
            FileError::Unsafe(s) => std::io::Error::new(std::io::ErrorKind::InvalidData, s),
        }
    }
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// `uid 1000 (alice)`.
fn who(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("uid {uid} ({})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// Creates `path` (and missing parents) if it does not exist, with exactly
/// `mode` for the directory itself, then checks it ([`check_dir`]). An
/// existing directory keeps its mode.
pub fn ensure_dir(path: &Path, mode: u32) -> Result<(), DirError> {
    match std::fs::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(path)
            {
                Ok(()) => {
                    // The umask may have taken bits away.
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                        .map_err(|e| PathIoError::new(path, "set the mode of", e))?;
                }
                Err(e) => return Err(PathIoError::new(path, "create the directory", e).into()),
            }
        }
        Err(e) => return Err(PathIoError::new(path, "inspect the directory", e).into()),
    }
    check_dir(path)
}

/// Checks that `path` is a directory owned by the agent's effective user
/// that neither its group nor others may write to, and that every
/// directory above it is owned by root or that user and writable by no one
/// else unless sticky. The error names the path, the owner and the mode.
pub fn check_dir(path: &Path) -> Result<(), DirError> {
    let unsafe_dir = |problem: String| DirError::Unsafe {
        path: path.to_owned(),
        problem,
    };
    if !path.is_absolute() {
        return Err(unsafe_dir("not an absolute path".into()));
    }
    let meta =
        std::fs::metadata(path).map_err(|e| PathIoError::new(path, "inspect the directory", e))?;
    if !meta.is_dir() {
        return Err(unsafe_dir("not a directory".into()));
    }
    let me = euid();
    if meta.uid() != me {
        return Err(unsafe_dir(format!(
            "owned by {}, not by the agent's user ({}): that user could change the agent's files",
            who(meta.uid()),
            who(me)
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "owned by {} with mode {mode:04o}: its group or others may write to it and \
             replace the agent's files (chmod go-w, or use a directory of its own)",
            who(meta.uid())
        )));
    }
    // The parents: whoever may rename an entry of one may swap the directory.
    let real = std::fs::canonicalize(path).map_err(|e| PathIoError::new(path, "resolve", e))?;
    for parent in real.ancestors().skip(1) {
        let m = std::fs::metadata(parent)
            .map_err(|e| PathIoError::new(parent, "inspect the directory", e))?;
        let pmode = m.mode() & 0o7777;
        if m.uid() != 0 && m.uid() != me {
            return Err(unsafe_dir(format!(
                "its parent {} is owned by {}, who could replace it",
                parent.display(),
                who(m.uid())
            )));
        }
        if pmode & 0o022 != 0 && pmode & 0o1000 == 0 {
            return Err(unsafe_dir(format!(
                "its parent {} (owned by {}) has mode {pmode:04o}: its group or others may \
                 write to it and replace it",
                parent.display(),
                who(m.uid())
            )));
        }
    }
    Ok(())
}

/// Turns the `ELOOP` of `O_NOFOLLOW` into a refusal naming the cause.
fn opened(r: std::io::Result<File>) -> Result<File, FileError> {
    r.map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            FileError::Unsafe("is a symbolic link: not followed".into())
        } else if e.raw_os_error() == Some(libc::ENXIO) {
            // O_WRONLY|O_NONBLOCK on a FIFO nobody reads.
            FileError::Unsafe("is a FIFO, not a regular file".into())
        } else {
            FileError::Io(e)
        }
    })
}

/// A file the agent may use: regular, its user's, one link. Sets mode
/// 0600 if the group or others had any access.
fn vet(file: &File) -> Result<std::fs::Metadata, FileError> {
    let m = file.metadata()?;
    let ft = m.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_block_device() || ft.is_char_device() {
            "a device"
        } else {
            "a special file"
        };
        return Err(FileError::Unsafe(format!("is {kind}, not a regular file")));
    }
    let me = euid();
    if m.uid() != me {
        return Err(FileError::Unsafe(format!(
            "is owned by {}, not by the agent's user ({})",
            who(m.uid()),
            who(me)
        )));
    }
    if m.nlink() > 1 {
        return Err(FileError::Unsafe(format!(
            "has {} hard links: not written through",
            m.nlink()
        )));
    }
    if m.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(m)
}

const NOFOLLOW: i32 = libc::O_NOFOLLOW | libc::O_NONBLOCK;

/// Opens `path` for appending, creating it (0600) if missing.
pub fn open_append(path: &Path) -> Result<File, FileError> {
    create_vetted(OpenOptions::new().append(true), path)
}

/// Opens `path` for reading and writing, creating it (0600) if missing,
/// never truncating it (a lock file).
pub fn open_rw(path: &Path) -> Result<File, FileError> {
    create_vetted(
        OpenOptions::new().read(true).write(true).truncate(false),
        path,
    )
}

/// Opens `path` with `opts`, creating it (0600) if missing, not following
/// a link, and vets what it opened.
fn create_vetted(opts: &mut OpenOptions, path: &Path) -> Result<File, FileError> {
    let f = opened(
        opts.create(true)
            .mode(FILE_MODE)
            .custom_flags(NOFOLLOW)
            .open(path),
    )?;
    vet(&f)?;
    Ok(f)
}

/// Opens `path` for reading; `None` if there is no such file.
pub fn open_read(path: &Path) -> Result<Option<File>, FileError> {
    match opened(
        OpenOptions::new()
            .read(true)
            .custom_flags(NOFOLLOW)
            .open(path),
    ) {
        Ok(f) => {
            vet(&f)?;
            Ok(Some(f))
        }
        Err(FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the whole of `path`, at most `max` bytes; `None` if there is no
/// such file. A larger file is refused.
pub fn read_regular(path: &Path, max: u64) -> Result<Option<Vec<u8>>, FileError> {
    let Some(f) = open_read(path)? else {
        return Ok(None);
    };
    read_bounded(f, max).map(Some)
}

/// Reads all of `f`, refusing more than `max` bytes.
pub fn read_bounded(f: File, max: u64) -> Result<Vec<u8>, FileError> {
    let too_big = |n: u64| {
        FileError::Unsafe(format!(
            "is {n} bytes or more, larger than the {max} bytes allowed"
        ))
    };
    let size = f.metadata()?.len();
    if size > max {
        return Err(too_big(size));
    }
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    f.take(max.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(too_big(out.len() as u64));
    }
    Ok(out)
}

/// Replaces `dir/name` with `bytes`: a temp file `.name.tmp` created
/// afresh (0600, `O_EXCL|O_NOFOLLOW`), written, fsynced, renamed over
/// `name`, then the directory fsynced. `dir` must have been checked
/// ([`ensure_dir`]).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(dir, name, |w| w.write_all(bytes))
}

/// [`write_atomic`] with the content written by `write` (through a
/// buffer: a large file is never held whole in memory).
pub fn write_atomic_with(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    // A leftover of a crash, or anything planted there: removed (a link
    // itself, not what it points to), never written through.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    {
        let f = opened(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .custom_flags(NOFOLLOW)
                .open(&tmp),
        )?;
        f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        let mut w = std::io::BufWriter::with_capacity(16 * 1024, f);
        write(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    fn private_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn modes_are_exact_whatever_the_umask() {
        let d = private_dir();
        // The unit's umask (0077) would make a 0755 directory 0700.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let made = ensure_dir(&d.path().join("sock"), 0o755);
        nix::sys::stat::umask(old);
        made.unwrap();
        let m = std::fs::metadata(d.path().join("sock")).unwrap().mode() & 0o777;
        assert_eq!(m, 0o755);
        // Files are 0600; an existing one open to others is made so.
        let p = d.path().join("a");
        drop(open_append(&p).unwrap());
        write_atomic(d.path(), "b", b"x").unwrap();
        std::fs::write(d.path().join("c"), b"x").unwrap();
        std::fs::set_permissions(d.path().join("c"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        drop(open_append(&d.path().join("c")).unwrap());
        for f in ["a", "b", "c"] {
            let m = std::fs::metadata(d.path().join(f)).unwrap().mode() & 0o777;
            assert_eq!(m, 0o600, "{f}");
        }
    }

    #[test]
    fn symlinks_are_not_followed() {
        let d = private_dir();
        let outside = private_dir();
        let target = outside.path().join("target");
        std::fs::write(&target, b"precious").unwrap();
        for name in ["log", "lock", "read", ".state.tmp"] {
            symlink(&target, d.path().join(name)).unwrap();
        }
        let e = open_append(&d.path().join("log")).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(open_rw(&d.path().join("lock")).is_err());
        assert!(read_regular(&d.path().join("read"), 100).is_err());
        // The temp file's link is replaced, not written through.
        write_atomic(d.path(), "state", b"new").unwrap();
        assert_eq!(std::fs::read(d.path().join("state")).unwrap(), b"new");
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        // A link at the final name is replaced by the rename, not followed.
        symlink(&target, d.path().join("final")).unwrap();
        write_atomic(d.path(), "final", b"new").unwrap();
        assert!(!std::fs::symlink_metadata(d.path().join("final"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    }

    #[test]
    fn special_files_big_files_and_hard_links_are_refused() {
        let d = private_dir();
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_regular(&fifo, 100).unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
        assert!(open_append(&fifo).is_err());
        let big = d.path().join("big");
        std::fs::write(&big, [b'x'; 101]).unwrap();
        let e = read_regular(&big, 100).unwrap_err().to_string();
        assert!(e.contains("larger than the 100 bytes"), "{e}");
        assert_eq!(read_regular(&big, 101).unwrap().unwrap().len(), 101);
        assert!(read_regular(&d.path().join("none"), 1).unwrap().is_none());
        std::fs::hard_link(&big, d.path().join("link")).unwrap();
        let e = open_append(&big).unwrap_err().to_string();
        assert!(e.contains("hard links"), "{e}");
        let e = read_regular(d.path(), 1).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
    }

    #[test]
    fn a_directory_others_may_write_is_refused_with_its_owner_and_mode() {
        let d = private_dir();
        let dir = d.path().join("state");
        ensure_dir(&dir, 0o700).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_dir(&dir).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: owned by uid ", dir.display())),
            "{e}"
        );
        assert!(e.contains("mode 0777"), "{e}");
        // A writable parent without the sticky bit.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("its parent") && e.contains("0777"), "{e}");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        check_dir(&dir).unwrap();
        assert!(check_dir(Path::new("relative")).is_err());
    }

    #[test]
    fn a_directory_of_another_user_is_refused_naming_the_owner() {
        let me = euid();
        // As root: a directory given to nobody; otherwise one of root's.
        let d = private_dir();
        let (dir, owner) = if me == 0 {
            let dir = d.path().join("theirs");
            std::fs::create_dir(&dir).unwrap();
            nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            (dir, 65534)
        } else {
            (PathBuf::from("/"), 0)
        };
        let e = ensure_dir(&dir, 0o700).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{}: owned by uid {owner}", dir.display())),
            "{e}"
        );
        assert!(e.contains("not by the agent's user"), "{e}");
    }
}

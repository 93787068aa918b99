//! `virtpoolctl top`: a full-screen view of the agent that refreshes
//! itself, like `virt-top` or `htop` (drawn by [`super::top_view`]). It
//! reads `/v1/status`, `/v1/pools` and the chosen pool's history every
//! `--delay`, and takes keys: `s`/`S` sort and reverse the members, `f`/`F`
//! (or Tab) choose a pool, `p`/`r` pause and resume it, arrows and pages
//! scroll, space freezes the screen, `q` (Esc, Ctrl-C) quits. `--once`
//! prints one screen as text and exits (for scripts, and where there is
//! no terminal).

use super::client::{Client, ClientError};
use super::top_view::{self, Model};
use crate::api::history::PoolHistory;
use crate::api::types::{ChangeResponse, PoolsResponse, StatusResponse};
use clap::Args;
use hyper::Method;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::crossterm::{execute, terminal};
use std::io::Write;
use std::time::{Duration, Instant};

/// `top`'s options.
#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    /// Seconds between refreshes.
    #[arg(long, short = 'd', default_value = "2", value_parser = parse_delay)]
    pub delay: Duration,
    /// Only this pool's members (and its history); `f` changes it.
    #[arg(long)]
    pub pool: Option<String>,
    /// Print one screen as text and exit.
    #[arg(long)]
    pub once: bool,
    /// With --once: the width of the screen [default: $COLUMNS, else 160].
    #[arg(long, requires = "once")]
    pub width: Option<u16>,
}

/// A refresh delay `top` refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelayError {
    #[error("{0:?} is not a number of seconds")]
    NotANumber(String),
    #[error("{0} s: between 0.1 and 3600 seconds")]
    OutOfRange(String),
}

fn parse_delay(s: &str) -> Result<Duration, DelayError> {
    let secs: f64 = s
        .parse()
        .map_err(|_| DelayError::NotANumber(s.to_string()))?;
    if !(0.1..=3600.0).contains(&secs) {
        return Err(DelayError::OutOfRange(s.to_string()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Why `top` stopped.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("the terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// Reads what one screen shows; the history is read for the chosen pool
/// only (a pool gone since is not an error: no history is shown).
async fn refresh(c: &Client, m: &mut Model) -> Result<(), ClientError> {
    m.status = Some(c.get::<StatusResponse>("/v1/status").await?);
    m.pools = c.get::<PoolsResponse>("/v1/pools").await?.pools;
    if let Some(f) = &m.filter {
        if !m.pools.iter().any(|p| &p.name == f) {
            m.message = Some(format!("pool {f} is gone: showing every pool"));
            m.filter = None;
        }
    }
    m.history = match m.history_pool() {
        Some(p) => c
            .get::<PoolHistory>(&format!("/v1/pools/{p}/history"))
            .await
            .ok(),
        None => None,
    };
    Ok(())
}

/// `top`: the full-screen view on a terminal until `q` (`None`), else
/// (stdout not a terminal, or `--once`) one screen as text to print.
pub async fn command(c: &Client, a: &TopArgs) -> Result<Option<String>, TopError> {
    use std::io::IsTerminal;
    if a.once || !std::io::stdout().is_terminal() {
        return once(c, a).await.map(Some);
    }
    run(c, a).await.map(|()| None)
}

/// `--once`: one screen as text.
pub async fn once(c: &Client, a: &TopArgs) -> Result<String, TopError> {
    let mut m = Model {
        filter: a.pool.clone(),
        ..Model::default()
    };
    refresh(c, &mut m).await?;
    let width = a
        .width
        .or_else(|| std::env::var("COLUMNS").ok().and_then(|v| v.parse().ok()))
        .unwrap_or(160);
    Ok(top_view::text(&m, width, 0))
}

/// Puts the terminal back as it was, however `top` ends.
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        terminal::enable_raw_mode()?;
        let mut out = std::io::stdout();
        if let Err(e) = execute!(out, terminal::EnterAlternateScreen) {
            let _ = terminal::disable_raw_mode();
            return Err(e);
        }
        Ok(Screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let mut out = std::io::stdout();
        let _ = execute!(
            out,
            terminal::LeaveAlternateScreen,
            ratatui::crossterm::cursor::Show
        );
        let _ = terminal::disable_raw_mode();
        let _ = out.flush();
    }
}

/// What a key asks for.
enum Ask {
    Nothing,
    Quit,
    Refresh,
    Pause(bool),
}

fn key(m: &mut Model, k: KeyEvent, page: usize) -> Ask {
    if k.kind == KeyEventKind::Release {
        return Ask::Nothing;
    }
    let shown = m.members().len();
    match k.code {
        KeyCode::Char('q') | KeyCode::Esc => return Ask::Quit,
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return Ask::Quit,
        KeyCode::Char('s') => {
            m.sort = m.sort.next();
            m.message = Some(format!("sorted by {}", m.sort.label()));
        }
        KeyCode::Char('S') => m.reverse = !m.reverse,
        KeyCode::Char('f') | KeyCode::Tab => {
            m.next_filter(false);
            return Ask::Refresh;
        }
        KeyCode::Char('F') | KeyCode::BackTab => {
            m.next_filter(true);
            return Ask::Refresh;
        }
        KeyCode::Char('p') => return Ask::Pause(true),
        KeyCode::Char('r') => return Ask::Pause(false),
        KeyCode::Char(' ') => {
            m.frozen = !m.frozen;
            m.message = Some(if m.frozen { "frozen" } else { "refreshing" }.into());
            return Ask::Refresh;
        }
        KeyCode::Down => m.scroll = (m.scroll + 1).min(shown.saturating_sub(1)),
        KeyCode::Up => m.scroll = m.scroll.saturating_sub(1),
        KeyCode::PageDown => m.scroll = (m.scroll + page).min(shown.saturating_sub(1)),
        KeyCode::PageUp => m.scroll = m.scroll.saturating_sub(page),
        KeyCode::Home => m.scroll = 0,
        _ => {}
    }
    Ask::Nothing
}

/// `p`/`r`: pauses or resumes the chosen pool, and says how it went.
async fn pause(c: &Client, m: &mut Model, paused: bool) {
    let Some(pool) = m.filter.clone() else {
        m.message = Some("choose a pool first (f), then p or r".into());
        return;
    };
    let verb = if paused { "pause" } else { "resume" };
    let r: Result<ChangeResponse, ClientError> = c
        .send::<(), _>(Method::POST, &format!("/v1/pools/{pool}/{verb}"), None)
        .await;
    m.message = Some(match r {
        Ok(r) => r.message,
        Err(e) => format!("{verb} {pool}: {e}"),
    });
}

/// The full-screen view until `q`.
pub async fn run(c: &Client, a: &TopArgs) -> Result<(), TopError> {
    let mut m = Model {
        filter: a.pool.clone(),
        ..Model::default()
    };
    // The first read fails before the screen changes: an agent that cannot
    // be reached is said as every other command says it.
    refresh(c, &mut m).await?;
    let screen = Screen::enter()?;
    let mut term =
        ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))?;
    term.clear()?;
    let mut next = Instant::now() + a.delay;
    loop {
        term.draw(|f| top_view::draw(f, &m))?;
        let page = top_view::member_rows(&m, term.size()?.height).max(1);
        let wait = next.saturating_duration_since(Instant::now());
        let mut ask = Ask::Nothing;
        if event::poll(wait)? {
            match event::read()? {
                Event::Key(k) => ask = key(&mut m, k, page),
                Event::Resize(..) => term.autoresize()?,
                _ => {}
            }
        } else {
            ask = Ask::Refresh;
            next = Instant::now() + a.delay;
        }
        match ask {
            Ask::Quit => break,
            Ask::Nothing => continue,
            Ask::Pause(p) => {
                pause(c, &mut m, p).await;
                next = Instant::now() + a.delay;
            }
            Ask::Refresh => {}
        }
        if m.frozen {
            continue;
        }
        if let Err(e) = refresh(c, &mut m).await {
            m.message = Some(format!("{e}; trying again"));
        }
    }
    drop(term);
    drop(screen);
    Ok(())
}

//! The command-line side: the API client, what each `virtpoolctl`
//! command does (`ctl_*`), human tables, and the options, man pages and
//! completions of both binaries.

pub mod assets;
pub mod change_text;
pub mod client;
pub mod ctl_args;
pub mod ctl_complete;
pub mod ctl_events;
pub mod ctl_output;
pub mod ctl_request;
pub mod daemon_args;
pub mod event_text;
pub mod history_text;
pub mod man_examples;
pub mod promtext;
pub mod report;
pub mod sparkline;
pub mod top;
pub mod top_view;
pub mod views_text;
pub mod whatif_text;

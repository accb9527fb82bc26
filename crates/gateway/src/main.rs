//! `sluice`: the gateway and its command-line tools in one binary.

mod access;
mod agent;
mod agents;
mod api;
mod api_client;
mod apis;
mod client;
mod commands;
mod config;
mod console;
mod context;
mod gateway;
mod http_client;
mod index;
mod mcp;
mod metrics;
mod pipeline;
mod replay;
mod reviews;
mod signin;
mod tls;
mod views;
mod webhooks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Config;

/// Exit codes: 0 success, 1 error, 2 usage error, 3 audit log failed verification,
/// 4 `policy check`: a statement would be refused, 5: one would be held for review.
#[derive(Parser)]
#[command(name = "sluice", version, about = "Identity-aware access gateway for databases and APIs", long_about = None)]
#[command(
    after_help = "Exit codes: 0 success, 1 error, 2 usage error, 3 audit log failed verification, 4 `policy check`: a statement would be refused, 5: one would be held for review.\nConfiguration: --config FILE (or SLUICE_CONFIG); without it, the embedded defaults."
)]
struct Cli {
    /// Configuration file (YAML). Defaults to the embedded configuration.
    #[arg(long, global = true, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (listeners, embedded agent, audit log).
    Gateway {
        /// Log format on stderr.
        #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SLUICE_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Manage local users (people): groups, roles, passwords.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Register, list and revoke remote agents (which dial in on listen.tunnel).
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Run a remote agent: dial the gateway, serve its connections with the credentials
    /// held here.
    Agent(AgentArgs),
    /// Manage service accounts (AI agents, CI jobs) and their API keys.
    #[command(subcommand, name = "service-accounts")]
    ServiceAccounts(ServiceAccountsCommand),
    /// Sign in to a gateway (identity provider in the browser, the device flow on a
    /// headless machine, or a local password); the token is kept in your config dir.
    Login {
        /// The gateway's API, e.g. http://127.0.0.1:8080.
        #[arg(long, env = "SLUICE_GATEWAY")]
        gateway: String,
        /// Sign in with a local password (read from stdin) instead of the identity provider.
        #[arg(long)]
        user: Option<String>,
        /// Use the device flow even where a browser could be opened.
        #[arg(long)]
        device: bool,
        /// Suggest this account to the identity provider.
        #[arg(long)]
        login_hint: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Forget the saved sign-in.
    Logout,
    /// Show who the saved sign-in is, as the gateway sees it.
    Whoami {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Print ready-to-use connection settings for CONNECTION (signed-in token included).
    Credentials {
        connection: String,
        #[arg(long, value_enum, default_value = "env")]
        format: client::CredentialFormat,
        /// CA certificate (PEM) that signed the gateway's certificate (sslrootcert).
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Open a local port that connects clients to CONNECTION as you, for clients that
    /// cannot carry a token (no password needed locally).
    Connect {
        connection: String,
        /// Local address to listen on (loopback only; port 0 picks one).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// CA certificate (PEM) to verify the gateway's TLS certificate with.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Serve the gateway's MCP tools over stdio, for AI clients configured with a command
    /// (Cursor's mcp.json, Claude Code): each message is relayed to the gateway's /mcp as
    /// you (--token / SLUICE_TOKEN, else the saved `sluice login`).
    Mcp {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Issue, list and revoke access tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Issue, list and revoke AWS key pairs for `kind: aws` connections (clients sign with
    /// them; they never hold an AWS credential).
    #[command(name = "aws-keys")]
    AwsKeys(AwsKeysArgs),
    /// Inspect recorded sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Try statements against the configured policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// List, inspect, approve and deny reviews of held statements (through the gateway's API,
    /// as the holder of the token).
    Reviews(ReviewsArgs),
    /// Ask for, list and decide time-boxed access to a connection (through the gateway's
    /// API, as the holder of the token).
    Access(AccessArgs),
}

#[derive(Args)]
struct AccessArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: AccessCommand,
}

#[derive(Subcommand)]
enum AccessCommand {
    /// Ask for CONNECTION (or for one review rule to be lifted on it) for a while.
    Request {
        connection: String,
        /// How long the grant lasts once approved, e.g. 30m, 4h.
        #[arg(long = "for")]
        duration: String,
        /// Why (shown to the approvers and recorded).
        #[arg(long)]
        reason: String,
        /// Lift this `review` rule instead of granting the connection.
        #[arg(long)]
        lift_rule: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    #[command(flatten)]
    Decision(DecisionCommand),
}

/// How CLI verbs reach the gateway's API.
#[derive(Args)]
struct ApiArgs {
    /// The gateway's API, e.g. http://127.0.0.1:8080 (default: listen.api of the config).
    #[arg(long, env = "SLUICE_GATEWAY", global = true)]
    gateway: Option<String>,
    /// Your sluice token; everything is done as its holder.
    #[arg(long, env = "SLUICE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
}

#[derive(Args)]
struct ReviewsArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: DecisionCommand,
}

/// The verbs reviews and access requests share.
#[derive(Subcommand)]
enum DecisionCommand {
    /// List them, newest first.
    List {
        /// pending (default), approved, denied, expired, withdrawn, used, or all.
        #[arg(long, default_value = "pending")]
        status: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Show one: what was asked, by whom, and every decision on it.
    Show {
        id: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Approve (you must be one of its reviewers, and never its requester).
    Approve {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Deny (a reviewer, or for a review its requester withdrawing it).
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
}

impl DecisionCommand {
    /// The API call it makes, and whether JSON was asked for.
    fn verb(self) -> (commands::Verb, bool) {
        match self {
            DecisionCommand::List { status, limit, out } => {
                (commands::Verb::List { status, limit }, out.json)
            }
            DecisionCommand::Show { id, out } => (commands::Verb::Show { id }, out.json),
            DecisionCommand::Approve { id, reason, out } => (
                commands::Verb::Decide {
                    id,
                    approve: true,
                    reason,
                },
                out.json,
            ),
            DecisionCommand::Deny { id, reason, out } => (
                commands::Verb::Decide {
                    id,
                    approve: false,
                    reason,
                },
                out.json,
            ),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct JsonFlag {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Add a user.
    Add {
        name: String,
        /// Group membership (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// admin, auditor or user.
        #[arg(long, default_value = "user")]
        role: String,
        /// Read a password (for `sluice login --user`) from stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set (from stdin) or, with --remove, remove a user's password.
    SetPassword {
        name: String,
        #[arg(long)]
        remove: bool,
    },
    /// Change a user's role (admin, auditor, user).
    SetRole { name: String, role: String },
    /// List users.
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Remove a user and their tokens.
    Remove { name: String },
}

#[derive(Subcommand)]
enum AgentsCommand {
    /// Register an agent; prints its key, the gateway certificate's fingerprint and the
    /// command that starts it (`--json`: `key`, `fingerprint`, `command`).
    Add {
        name: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Each agent: connected or not, since when, version, address, sessions.
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Revoke an agent's key; its tunnels close within seconds.
    Revoke { name: String },
}

#[derive(Args)]
struct AgentArgs {
    /// The gateway's tunnel listener, e.g. https://gateway.example.com:8443.
    #[arg(long, env = "SLUICE_AGENT_GATEWAY")]
    gateway: String,
    /// The key printed by `sluice agents add`.
    #[arg(long, env = "SLUICE_AGENT_KEY", hide_env_values = true)]
    key: String,
    /// The gateway certificate's SHA-256 fingerprint (pinned).
    #[arg(long, env = "SLUICE_AGENT_FINGERPRINT", conflicts_with = "ca")]
    fingerprint: Option<String>,
    /// CA certificate (PEM) to verify the gateway's certificate with instead.
    #[arg(long, env = "SLUICE_AGENT_CA")]
    ca: Option<PathBuf>,
    /// Only open targets matching this `host:port` glob (repeatable; env: comma-separated).
    /// Without it the agent opens whatever target the gateway names.
    #[arg(
        long = "allow-target",
        env = "SLUICE_AGENT_ALLOW_TARGETS",
        value_delimiter = ','
    )]
    allow_targets: Vec<String>,
    /// Only resolve secret references matching this glob, e.g. `env:PG_*` (repeatable;
    /// env: comma-separated). Without it the agent resolves whatever the gateway names.
    #[arg(
        long = "allow-secret",
        env = "SLUICE_AGENT_ALLOW_SECRETS",
        value_delimiter = ','
    )]
    allow_secrets: Vec<String>,
    /// Worker threads (1: a single-threaded agent, the default; more for many sessions).
    #[arg(long, default_value_t = 1, env = "SLUICE_AGENT_THREADS")]
    threads: usize,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SLUICE_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum ServiceAccountsCommand {
    /// Add a service account and print its first API key alone on stdout.
    Add {
        name: String,
        /// Group membership (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// user (default) or auditor (e.g. a metrics scraper).
        #[arg(long, default_value = "user")]
        role: String,
        /// Lifetime of the key, e.g. 30d.
        #[arg(long, default_value = "90d")]
        ttl: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Issue another API key (rotate, then `sluice tokens revoke` the old one).
    IssueKey {
        name: String,
        #[arg(long, default_value = "90d")]
        ttl: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// List service accounts.
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Remove a service account and its keys.
    Remove { name: String },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Issue a token for a user; prints the token alone on stdout.
    Issue {
        user: String,
        /// Lifetime, e.g. 30m, 12h, 7d.
        #[arg(long, default_value = "12h")]
        ttl: String,
    },
    /// List tokens (ids and expiry; never the secrets).
    List {
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Revoke a token by its id (see `tokens list`).
    Revoke { id: String },
}

#[derive(Args)]
struct AwsKeysArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: AwsKeysCommand,
}

#[derive(Subcommand)]
enum AwsKeysCommand {
    /// Issue a key pair: for yourself through the gateway's API (as the holder of your
    /// token), or with `--user` for anyone, in the store of `--config`. Prints the access
    /// key id and secret (`--json`: an object), and the environment to use them with.
    Issue {
        /// Issue for this user directly in the store (needs the config and its data_dir).
        #[arg(long)]
        user: Option<String>,
        /// The one `kind: aws` connection the key is for (default: whichever serves the
        /// service a request is signed for).
        #[arg(long)]
        connection: Option<String>,
        /// Lifetime, e.g. 1h, 12h, 7d (at most 30d).
        #[arg(long, default_value = "12h")]
        ttl: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// List key pairs (ids, users, state; never the secrets).
    List {
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Revoke a key pair by its access key id.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// List sessions, newest first. Every given filter must hold.
    List {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        connection: Option<String>,
        /// People or agents (service accounts).
        #[arg(long, value_parser = ["human", "agent"])]
        actor: Option<String>,
        /// Sessions with a denied statement, a held one, or masked results.
        #[arg(long = "with", value_parser = ["denied", "held", "masked"])]
        with: Option<String>,
        /// Sessions with a statement containing this text (case-insensitive for ASCII).
        #[arg(long)]
        text: Option<String>,
        /// Sessions started at or after this time (RFC 3339, e.g. 2026-11-27T09:00:00Z).
        #[arg(long)]
        since: Option<humantime::Timestamp>,
        /// Sessions started before this time (RFC 3339).
        #[arg(long)]
        until: Option<humantime::Timestamp>,
        /// Most sessions to list.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Show one session with every statement, its parameters and outcome.
    Show {
        id: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Find statements across all sessions by the agent context behind them (prompt, tool
    /// call, trace) or their text. Every given criterion must match. Exit 0 when something
    /// was found, 1 when nothing was.
    Search {
        /// Words in the prompt or intent (case-insensitive).
        #[arg(long)]
        prompt: Option<String>,
        /// The tool-call id exactly.
        #[arg(long)]
        tool_call: Option<String>,
        /// A trace id (32 hex digits) or a whole W3C traceparent.
        #[arg(long)]
        trace: Option<String>,
        /// The agent's conversation id exactly.
        #[arg(long)]
        conversation: Option<String>,
        /// Text in the statement (case-insensitive).
        #[arg(long)]
        statement: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        connection: Option<String>,
        /// Most statements to show (the newest).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print what the policies decide for SQL run by a user on a connection, without running
    /// it. Exit 0 when every statement would be allowed, 4 when one would be refused, 5 when
    /// one would be held for review.
    Check {
        /// Connection name.
        #[arg(long)]
        connection: String,
        /// The user the statements run as; their groups come from the user store.
        #[arg(long)]
        user: String,
        /// Extra group memberships to assume (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Judge as a non-human identity (AI agent, CI job).
        #[arg(long)]
        agent: bool,
        /// The SQL; several statements are judged in order, as in one session.
        sql: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Judge the statements recorded in the audit log with candidate policies and report
    /// what would have been decided differently.
    Replay {
        /// How far back: a duration (7d, 12h) or an RFC 3339 time.
        #[arg(long, default_value = "7d")]
        since: String,
        /// A YAML file with `policies:` (a whole config file works too).
        #[arg(long)]
        policies: PathBuf,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain of the whole audit log.
    Verify {
        #[command(flatten)]
        out: JsonFlag,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Command::Gateway { log_format } => Some(*log_format),
        Command::Agent(args) => Some(args.log_format),
        _ => None,
    };
    // Only the command-line tools: the gateway writes to sockets whose peers may vanish,
    // and must get EPIPE there, not die of SIGPIPE.
    if log_format.is_none() {
        restore_default_sigpipe();
    }
    init_logging(log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The agent runs beside the targets, with no gateway configuration at all.
    let command = match cli.command {
        Command::Agent(args) => {
            return agent::run(agent::Args {
                gateway: &args.gateway,
                key: &args.key,
                fingerprint: args.fingerprint.as_deref(),
                ca: args.ca.as_deref(),
                allowed_targets: args.allow_targets,
                allowed_secrets: args.allow_secrets,
                threads: args.threads,
            })
        }
        other => other,
    };
    let config = Config::load(cli.config.as_deref())?;
    match command {
        Command::Agent(_) => Ok(ExitCode::from(2)),
        Command::Agents(cmd) => commands::agents(&config, cmd),
        Command::Gateway { .. } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let lock = runtime.block_on(gateway::run(config))?;
            drop(runtime);
            drop(lock);
            Ok(ExitCode::SUCCESS)
        }
        Command::Users(cmd) => commands::users(&config, cmd),
        Command::ServiceAccounts(cmd) => commands::service_accounts(&config, cmd),
        Command::Login {
            gateway,
            user,
            device,
            login_hint,
            out,
        } => {
            let method = match user {
                Some(user) => client::LoginMethod::Password { user },
                None => client::LoginMethod::Browser {
                    force_device: device,
                    login_hint,
                },
            };
            client::login(&gateway, method, out.json)
        }
        Command::Logout => client::logout(),
        Command::Whoami { out } => client::whoami(out.json),
        Command::Credentials {
            connection,
            format,
            ca,
        } => client::credentials(&connection, format, ca.as_deref()),
        Command::Connect {
            connection,
            listen,
            ca,
        } => client::connect(&connection, listen, ca.as_deref()),
        Command::Mcp { api } => {
            let target = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(commands::api_target(
                    &config,
                    api.gateway,
                    api.token.unwrap_or_default(),
                ))?;
            let (gateway, token) = target;
            if token.is_empty() {
                anyhow::bail!("no token: run `sluice login`, or set SLUICE_TOKEN");
            }
            client::mcp::run(&gateway, token)
        }
        Command::Tokens(cmd) => commands::tokens(&config, cmd),
        Command::AwsKeys(args) => commands::aws_keys(
            &config,
            args.command,
            args.api.gateway,
            args.api.token.unwrap_or_default(),
        ),
        Command::Sessions(cmd) => commands::sessions(&config, cmd),
        Command::Audit(AuditCommand::Verify { out }) => commands::audit_verify(&config, out.json),
        Command::Access(args) => {
            let (verb, json) = match args.command {
                AccessCommand::Request {
                    connection,
                    duration,
                    reason,
                    lift_rule,
                    out,
                } => (
                    commands::AccessVerb::Request {
                        connection,
                        duration,
                        reason,
                        lift_rule,
                    },
                    out.json,
                ),
                AccessCommand::Decision(command) => {
                    let (verb, json) = command.verb();
                    (commands::AccessVerb::Other(verb), json)
                }
            };
            let (gateway, token) = (args.api.gateway, args.api.token.unwrap_or_default());
            commands::access(&config, gateway, token, verb, json)
        }
        Command::Reviews(args) => {
            let (verb, json) = args.command.verb();
            let (gateway, token) = (args.api.gateway, args.api.token.unwrap_or_default());
            commands::reviews(&config, gateway, token, verb, json)
        }
        Command::Policy(PolicyCommand::Replay {
            since,
            policies,
            out,
        }) => replay::replay(&config, &policies, replay::parse_since(&since)?, out.json),
        Command::Policy(PolicyCommand::Check {
            connection,
            user,
            groups,
            agent,
            sql,
            out,
        }) => commands::policy_check(
            &config,
            &commands::PolicySubject {
                connection,
                user,
                groups,
                agent,
            },
            &sql,
            out.json,
        ),
    }
}

/// Structured logs on stderr; level from `SLUICE_LOG` (default `info` for the gateway,
/// `warn` for the command-line tools so their stdout stays clean).
fn init_logging(gateway: Option<LogFormat>) {
    use tracing_subscriber::EnvFilter;
    let default = if gateway.is_some() { "info" } else { "warn" };
    let mut spec = std::env::var("SLUICE_LOG").unwrap_or_else(|_| default.to_owned());
    // rmcp logs MCP session ids (the clients' handles on their sessions) at info: kept at
    // warn unless SLUICE_LOG names rmcp itself.
    if !spec.contains("rmcp") {
        spec.push_str(",rmcp=warn");
    }
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match gateway {
        Some(LogFormat::Json) => builder.json().init(),
        _ => builder.init(),
    }
}

/// `sluice sessions show … | head` must end quietly when the reader goes away, as other
/// command-line tools do, instead of panicking on the failed write: the Rust runtime ignores
/// SIGPIPE, so the command-line tools restore the default action (terminate) before
/// anything is printed. The
/// `sigpipe` crate does exactly this (one `signal(2)` call), so no unsafe code lives here.
fn restore_default_sigpipe() {
    sigpipe::reset();
}

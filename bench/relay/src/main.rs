//! `bench-relay LISTEN UPSTREAM`: copies bytes between each accepted connection and a new
//! connection to UPSTREAM, on the same tokio runtime flavour as the gateway, and does nothing
//! else — no parsing, no audit. bench/pgbench.sh runs it beside sluice so the report shows what
//! a tokio relay costs by itself, and so how much of sluice's overhead is its own work.

use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::{TcpListener, TcpStream};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream] = args.as_slice() else {
        eprintln!(
            "usage: bench-relay LISTEN_ADDR UPSTREAM_ADDR   (e.g. 127.0.0.1:6000 127.0.0.1:5432)"
        );
        return ExitCode::from(2);
    };
    let (Ok(listen), Ok(upstream)) = (listen.parse::<SocketAddr>(), upstream.parse::<SocketAddr>())
    else {
        eprintln!("bench-relay: both arguments must be IP:PORT socket addresses");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("bench-relay: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(listen, upstream)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench-relay: {err}");
            ExitCode::from(1)
        }
    }
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(err) = relay(client, upstream).await {
                eprintln!("bench-relay: connection ended: {err}");
            }
        });
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

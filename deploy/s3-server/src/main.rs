//! `halyard-s3-server ROOT --listen HOST:PORT`: a local S3 server with signature checks.
//! Credentials come from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: halyard-s3-server ROOT [--listen HOST:PORT] (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)";
    let root = args.next().ok_or_else(|| std::io::Error::other(usage))?;
    let mut listen = "127.0.0.1:9000".to_string();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().ok_or_else(|| std::io::Error::other(usage))?,
            _ => return Err(std::io::Error::other(usage)),
        }
    }
    let ak = std::env::var("AWS_ACCESS_KEY_ID").map_err(|_| std::io::Error::other(usage))?;
    let sk = std::env::var("AWS_SECRET_ACCESS_KEY").map_err(|_| std::io::Error::other(usage))?;
    std::fs::create_dir_all(&root)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        eprintln!("halyard-s3-server: serving {root} on http://{listen}");
        halyard_s3_server::serve(listener, std::path::Path::new(&root), &ak, &sk).await
    })
}

//! The baseline the EDS server replaces: nginx with its upstreams in a file,
//! rewritten and reloaded on every change (what consul-template does).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use demo::backend::Instance;
use demo::churn::Registrar;
use tempfile::TempDir;
use test_support::ManagedProcess;

#[derive(Debug, thiserror::Error)]
pub enum NginxError {
    #[error("nginx: {0}")]
    Harness(#[from] test_support::HarnessError),
    #[error("writing nginx config {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nginx -s reload failed: {0}")]
    Reload(String),
}

/// An nginx master process proxying one listener to a file-defined upstream.
#[derive(Debug)]
pub struct NginxGateway {
    process: ManagedProcess,
    dir: TempDir,
    listen: SocketAddr,
    upstreams: Vec<SocketAddr>,
    pub reloads: u64,
}

impl NginxGateway {
    pub async fn start(listen: SocketAddr, upstreams: Vec<SocketAddr>) -> Result<Self, NginxError> {
        let dir = tempfile::Builder::new()
            .prefix("nginx-")
            .tempdir()
            .map_err(|source| NginxError::Write {
                path: "temporary directory".into(),
                source,
            })?;
        write_config(dir.path(), listen, &upstreams)?;
        let args = vec![
            "-p".to_owned(),
            dir.path().display().to_string(),
            "-c".to_owned(),
            dir.path().join("nginx.conf").display().to_string(),
            "-g".to_owned(),
            "daemon off;".to_owned(),
        ];
        let process = ManagedProcess::spawn(
            "nginx",
            &test_support::tool("nginx")?,
            &args,
            &[],
            &dir.path().join("nginx.out"),
        )?;
        let gateway = Self {
            process,
            dir,
            listen,
            upstreams,
            reloads: 0,
        };
        test_support::eventually(
            "nginx to listen",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || async {
                tokio::net::TcpStream::connect(listen)
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await?;
        Ok(gateway)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("nginx.conf")
    }

    /// Rewrites the upstream list and reloads, as a template tool would.
    pub fn set_upstreams(&mut self, upstreams: Vec<SocketAddr>) -> Result<(), NginxError> {
        self.upstreams = upstreams;
        write_config(self.dir.path(), self.listen, &self.upstreams)?;
        let output = Command::new(test_support::tool("nginx")?)
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(self.config_path())
            .args(["-s", "reload"])
            .output()
            .map_err(|e| NginxError::Reload(e.to_string()))?;
        if !output.status.success() {
            return Err(NginxError::Reload(
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        self.reloads += 1;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

impl Registrar for NginxGateway {
    type Error = NginxError;

    async fn register(&mut self, instance: &Instance) -> Result<(), NginxError> {
        let mut upstreams = self.upstreams.clone();
        upstreams.push(instance.addr);
        self.set_upstreams(upstreams)
    }

    async fn deregister(&mut self, instance: &Instance) -> Result<(), NginxError> {
        let upstreams = self
            .upstreams
            .iter()
            .copied()
            .filter(|addr| *addr != instance.addr)
            .collect();
        self.set_upstreams(upstreams)
    }
}

fn write_config(
    dir: &std::path::Path,
    listen: SocketAddr,
    upstreams: &[SocketAddr],
) -> Result<(), NginxError> {
    let prefix = dir.display();
    let servers: String = upstreams
        .iter()
        .map(|addr| format!("    server {addr};\n"))
        .collect();
    // Temp paths under the prefix: the packaged defaults need root-owned dirs.
    let config = format!(
        "worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n\
           client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n\
           fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n\
           upstream backend {{\n{servers}    keepalive 32;\n  }}\n\
           server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://backend;\n\
             proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config).map_err(|source| NginxError::Write { path, source })
}

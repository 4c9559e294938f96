/**
 * A private nginx (Debian's package) for tests and benches: its own prefix directory,
 * config, logs, temp and cache paths, run in the foreground (`daemon off`) and stopped by
 * its pid; the system's nginx service and /etc/nginx are never touched.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export type NginxSite =
  /** A plain static server: `root <dir>;`, over TLS with `tls` (PEM files). */
  | { kind: 'static'; root: string; tls?: { cert: string; key: string } }
  /** A caching reverse proxy that fetches and caches `sliceSize` slices of ranged content. */
  | { kind: 'proxy'; upstream: string; sliceSize: string };

export interface Nginx {
  dir: string;
  /** The access log's lines so far. */
  accessLog(): string[];
  stop(): Promise<void>;
}

/** True if this nginx was built with the slice module (Debian's `nginx` package is). */
export function nginxHasSlice(): boolean {
  const r = spawnSync('nginx', ['-V'], { encoding: 'utf8' });
  return r.status === 0 && `${r.stdout}${r.stderr}`.includes('--with-http_slice_module');
}

function location(site: NginxSite, dir: string): string {
  if (site.kind === 'static') return `root ${site.root};`;
  return `
      slice ${site.sliceSize};
      proxy_cache osf;
      proxy_cache_key $uri$slice_range;
      proxy_set_header Range $slice_range;
      proxy_cache_valid 200 206 1h;
      # One request fills a slice; the others wait for it instead of going to the origin.
      proxy_cache_lock on;
      proxy_cache_lock_timeout 120s;
      proxy_cache_lock_age 120s;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://${site.upstream};
      proxy_temp_path ${dir}/proxy-temp;`;
}

function config(dir: string, listen: string, site: NginxSite): string {
  const tls = site.kind === 'static' ? site.tls : undefined;
  return `
daemon off;
master_process on;
user root;
worker_processes 2;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  access_log ${dir}/access.log;
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 10000;
  client_body_temp_path ${dir}/body-temp;
  proxy_temp_path ${dir}/proxy-temp;
  fastcgi_temp_path ${dir}/fastcgi-temp;
  uwsgi_temp_path ${dir}/uwsgi-temp;
  scgi_temp_path ${dir}/scgi-temp;
  proxy_cache_path ${dir}/cache levels=1:2 keys_zone=osf:16m max_size=4g inactive=1h use_temp_path=off;
  server {
    listen ${listen}${tls ? ' ssl' : ''};${tls ? `\n    ssl_certificate ${tls.cert};\n    ssl_certificate_key ${tls.key};` : ''}
    location / {${location(site, dir)}
    }
  }
}
`;
}

/**
 * Starts nginx with its own config under `dir`; `spawnWith` runs it (e.g. inside a network
 * namespace). Resolves once the listening socket is bound (nginx writes its pid file after).
 */
export async function startNginx(
  dir: string,
  listen: string,
  site: NginxSite,
  spawnWith: (cmd: string, args: string[]) => ChildProcess = (cmd, args) => spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }),
): Promise<Nginx> {
  mkdirSync(dir, { recursive: true });
  const conf = join(dir, 'nginx.conf');
  writeFileSync(conf, config(dir, listen, site));
  const child = spawnWith('nginx', ['-p', dir, '-e', join(dir, 'error.log'), '-c', conf]);
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const kill = () => child.kill('SIGKILL');
  process.on('exit', kill);
  const pidFile = join(dir, 'nginx.pid');
  for (let i = 0; !existsSync(pidFile); i++) {
    if (child.exitCode !== null || i > 200) {
      kill();
      const log = existsSync(join(dir, 'error.log')) ? readFileSync(join(dir, 'error.log'), 'utf8') : '';
      throw new Error(`nginx did not start: ${stderr}${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    dir,
    accessLog: () => (existsSync(join(dir, 'access.log')) ? readFileSync(join(dir, 'access.log'), 'utf8').split('\n').filter(Boolean) : []),
    async stop() {
      process.off('exit', kill);
      if (child.exitCode === null) child.kill('SIGTERM');
      const timer = setTimeout(kill, 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * The proxy-scale scenario shared by __test__/transfer-http.spec.ts and
 * benches/proxy-scale.ts: an origin namespace running `osfarm serve`, a proxy namespace
 * running nginx (proxy_cache + slice), and receiver namespaces that each hold an older
 * image and pull a newer one at the same time, directly or through the proxy. The origin's
 * egress is read from its eth0 counters.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import { Repository } from '../../src/repo/index.js';
import type { PullResult } from '../../src/transfer/http/pull.js';
import { createLan, sweepStale, type Lan } from './netns.js';
import { finished, lastOutcome } from './tmp.js';
import { startNginx } from './nginx.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = [`--import=${import.meta.resolve('tsx')}`, join(ROOT, 'src', 'cli', 'main.ts')];
const PORT = 8080;

export interface Round {
  receivers: number;
  viaProxy: boolean;
  /** Bytes the origin's interface sent during the round (headers and TCP/IP included). */
  originTxBytes: number;
  pulls: PullResult[];
  seconds: number;
}

export class ProxyLab {
  private serve: ChildProcess | undefined;
  private constructor(
    readonly dir: string,
    readonly lan: Lan,
    readonly digest: string,
    readonly receivers: number,
  ) {}

  /** Builds the network and repositories: origin has both images, every receiver the old one. */
  static async create(dir: string, receivers: number, oldImage: string, newImage: string): Promise<ProxyLab> {
    sweepStale('osf-http');
    const names = ['origin', 'proxy', ...Array.from({ length: receivers }, (_, i) => `r${i}`)];
    const lan = createLan(`osf-http-${process.pid}`, names, '10.99.0');
    try {
      const origin = Repository.init(join(dir, 'origin'));
      origin.addSync(oldImage, { name: 'old' });
      const digest = origin.addSync(newImage, { name: 'new' }).digest;
      for (let i = 0; i < receivers; i++) Repository.init(join(dir, `r${i}`)).addSync(oldImage, { name: 'old' });
      const lab = new ProxyLab(dir, lan, digest, receivers);
      await lab.startServe();
      return lab;
    } catch (err) {
      lan.destroy();
      throw err;
    }
  }

  private async startServe(): Promise<void> {
    const h = this.lan.hosts.origin!;
    const child = this.lan.spawnIn('origin', process.execPath, [...CLI, '--json', 'serve', '--listen', `${h.ip}:${PORT}`, '--repo', join(this.dir, 'origin'), '--insecure']);
    this.serve = child;
    await new Promise<void>((resolve, reject) => {
      let out = '';
      let err = '';
      child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('"listening"')) resolve();
      });
      child.once('exit', () => reject(new Error(`osfarm serve exited: ${err}`)));
      setTimeout(() => reject(new Error(`osfarm serve did not listen within 60 s: ${err}`)), 60_000).unref();
    });
  }

  /** Pulls the new image into receivers r0..r(n-1) at once; each starts without it. */
  async round(n: number, viaProxy: boolean): Promise<Round> {
    const origin = this.lan.hosts.origin!;
    const proxy = this.lan.hosts.proxy!;
    for (let i = 0; i < n; i++) {
      const repoDir = join(this.dir, `r${i}`);
      const repo = Repository.open(repoDir);
      if (repo.list().some((e) => e.digest === this.digest)) repo.removeSync(this.digest);
      rmSync(join(repoDir, 'tmp', `${this.digest}.partial`), { force: true });
      rmSync(join(repoDir, 'tmp', `${this.digest}.have`), { force: true });
    }
    const cacheDir = join(this.dir, `nginx-${n}-${Date.now()}`);
    mkdirSync(cacheDir, { recursive: true });
    const nginx = viaProxy
      ? await startNginx(cacheDir, `${proxy.ip}:${PORT}`, { kind: 'proxy', upstream: `${origin.ip}:${PORT}`, sliceSize: '1m' }, (cmd, args) =>
          this.lan.spawnIn('proxy', cmd, args),
        )
      : undefined;
    try {
      const from = viaProxy ? proxy.ip : origin.ip;
      const tx0 = this.lan.counter('origin', 'tx');
      const t0 = process.hrtime.bigint();
      const runs = await Promise.all(
        Array.from({ length: n }, (_, i) =>
          finished(
            this.lan.spawnIn(`r${i}`, process.execPath, [...CLI, '--json', 'pull', `http://${from}:${PORT}/images/${this.digest}`, '--repo', join(this.dir, `r${i}`)]),
          ),
        ),
      );
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const originTxBytes = this.lan.counter('origin', 'tx') - tx0;
      const pulls = runs.map((r, i) => {
        if (r.status !== 0) throw new Error(`pull in r${i} failed (${r.status}): ${r.stdout}${r.stderr}`);
        return lastOutcome<PullResult>(r.stdout);
      });
      return { receivers: n, viaProxy, originTxBytes, pulls, seconds };
    } finally {
      await nginx?.stop();
      rmSync(cacheDir, { recursive: true, force: true });
    }
  }

  /** The image file a receiver assembled. */
  imagePath(receiver: number): string {
    return Repository.open(join(this.dir, `r${receiver}`)).resolve(this.digest).path;
  }

  async close(): Promise<void> {
    const child = this.serve;
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
    }
    this.lan.destroy();
  }
}

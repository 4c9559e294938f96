/**
 * The REST API over one repository and stage store: catalog and package search, spec
 * checks, build and transfer jobs (with SSE), images, stages, compare. Each route carries
 * its own documentation, from which openapi.ts writes the OpenAPI document, so the two
 * cannot drift apart. docs/web.md is the overview.
 */
import { createReadStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';

import { checkSources, packageIndexDir, PackageIndexes } from '../archive/index.js';
import { compare } from '../blocks/index.js';
import { ARCHITECTURES, type Architecture, type BuildSpec, canonicalSpec, DISTRIBUTIONS, type Distribution, hostPathIssues, parseText, sniffFormat, SpecError, specDigest, type SpecFormat, specFromObject } from '../spec/index.js';
import { invalidArgument, OsfarmError } from '../base/errors.js';
import { runBuildJob } from '../farm/build-job.js';
import type { FarmClient } from '../farm/client.js';
import { diffImages, exportSpec, imageSbom, imagesOfRequest, repositoryParents, requireBuildMeta, type SbomFormat } from '../images/index.js';
import { type ImageEntry, Repository } from '../repo/index.js';
import { imageView } from '../app/images.js';
import { removeImage, tagImage, untagImage } from '../trust/tags.js';
import { gcStages, stageSummary } from '../app/stages.js';
import { parseSize } from '../base/size.js';
import { parseImageUrl, pull } from '../transfer/http/pull.js';
import { push } from '../transfer/push/push.js';
import { type Catalog, catalog } from './catalog.js';
import { field, optField, query, readJson, type Route, sendJson, sendText } from './http.js';
import { isFinal, type JobContext, type JobInfo, JobQueue, type JobSource, streamJob } from './jobs.js';
import { bootRoutes } from './boot.js';

export interface ApiOptions {
  repo: string;
  stages: string;
  /** Build scratch space and package caches (build()'s workDir). */
  workDir: string;
  /** Builds waiting at most (one more is refused with 503). */
  maxQueuedBuilds: number;
  /** A build farm: builds go to its workers instead of running in this process. */
  farm?: FarmClient;
}

/** What a route documents about itself (openapi.ts turns it into the OpenAPI document). */
export interface RouteDoc {
  summary: string;
  tag: 'session' | 'compose' | 'jobs' | 'images' | 'stages' | 'compare' | 'transfer' | 'docs';
  query?: Record<string, { description: string; required?: boolean }>;
  /** The JSON body's fields, by name, with a description. */
  body?: Record<string, { description: string; required?: boolean; type?: string }>;
  /** The success answer: status, content type and a description. */
  response: { status: number; type?: string; description: string };
}

export type DocumentedRoute = Route & { doc: RouteDoc };

/**
 * A spec sent over the web: checked like any other, except that it may not read the
 * server's files (`files[].source`, a parent spec file). A parent names an image in the
 * repository, whose recorded spec it builds on.
 */
function webSpec(body: Record<string, unknown>, repo: string): BuildSpec {
  const text = body.text;
  let raw: unknown = body.spec;
  if (typeof text === 'string') {
    const format = optField(body, 'format') as SpecFormat | undefined;
    if (format !== undefined && !['yaml', 'json', 'xml'].includes(format)) throw invalidArgument('format must be yaml, json or xml');
    // Parsed only to an object here: validation below applies the web's limits first.
    raw = parseText(text, format ?? sniffFormat(text));
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw invalidArgument('send the spec as `spec` (a JSON object) or `text` (YAML, JSON or XML, with `format`)');
  const issues = hostPathIssues(raw);
  if (issues.length > 0) throw new SpecError(issues);
  return specFromObject(raw, { baseDir: '/nonexistent/osfarm-web', resolveParent: repositoryParents(repo) });
}

/** Emits a transfer's `sample` events at most every 200 ms (and the last one always), timed from the start. */
function sampler(emit: JobContext['emit']): (fields: Record<string, number>, force?: boolean) => void {
  const started = Date.now();
  let last = 0;
  return (fields, force = false) => {
    const now = Date.now();
    if (!force && now - last < 200) return;
    last = now;
    emit({ type: 'sample', sample: { ms: now - started, ...fields } });
  };
}

/** The longest probe: it holds a worker, so a few minutes at most. */
const MAX_PROBE_MS = 600_000;

function oneOf<T extends string>(value: string, allowed: readonly T[], what: string): T {
  if (!(allowed as readonly string[]).includes(value)) throw invalidArgument(`${what} ${JSON.stringify(value)} is not one of ${allowed.join(', ')}`);
  return value as T;
}

export class Api {
  /** Builds: run in this process, or by a farm's workers. */
  readonly builds: JobSource;
  private readonly localBuilds: JobQueue | undefined;
  readonly transfers: JobQueue;
  readonly boots: JobQueue;
  private readonly packages: PackageIndexes;
  private catalogCache: { at: number; value: Promise<Catalog> } | undefined;

  constructor(private readonly o: ApiOptions) {
    this.localBuilds = o.farm ? undefined : new JobQueue({ concurrency: 1, maxQueued: o.maxQueuedBuilds });
    this.builds = o.farm ?? this.localBuilds!;
    this.transfers = new JobQueue({ concurrency: 2, maxQueued: 8 });
    // A VM takes CPU for as long as it runs: one at a time, one waiting.
    this.boots = new JobQueue({ concurrency: 1, maxQueued: 1 });
    this.packages = new PackageIndexes(packageIndexDir(o.workDir));
  }

  /** The catalog probes tools and files: once a minute is often enough. */
  private catalog(): Promise<Catalog> {
    const now = Date.now();
    if (!this.catalogCache || now - this.catalogCache.at > 60_000) {
      const value = catalog();
      this.catalogCache = { at: now, value };
      value.catch(() => (this.catalogCache = undefined));
    }
    return this.catalogCache.value;
  }

  /** The repository, created (with the defaults) on first use if missing, as `osfarm serve` does. */
  private repo(): Repository {
    return Repository.openOrInit(this.o.repo);
  }

  /**
   * A web spec against the release catalogue and package index (422 with the issues, as an
   * invalid spec). A request may not make the server fetch from a URL it names: indexes of
   * the spec's own mirrors are used only if a build already fetched them.
   */
  private async checkSources(spec: BuildSpec): Promise<void> {
    const { issues } = await checkSources(spec, { indexes: this.packages, fetch: 'host' });
    if (issues.length > 0) throw new SpecError(issues);
  }

  private async job(id: string): Promise<{ queue: JobSource; info: JobInfo }> {
    for (const queue of [this.builds, this.transfers, this.boots]) {
      const info = await queue.get(id);
      if (info) return { queue, info };
    }
    throw new OsfarmError('OSFARM_NOT_FOUND', `no job ${id} (finished jobs are forgotten after a while, or when the server restarts)`);
  }

  private image(ref: string): ImageEntry {
    return this.repo().resolve(ref);
  }

  async close(): Promise<void> {
    await Promise.all([this.builds.close(), this.transfers.close(), this.boots.close()]);
  }

  routes(): DocumentedRoute[] {
    return [
      {
        method: 'GET', path: '/api/distributions', read: true,
        doc: { tag: 'compose', summary: 'Distributions the drivers know (buildable here or not), their releases and groups, and the architectures', response: { status: 200, description: 'Catalog' } },
        handler: async ({ res }) => sendJson(res, 200, await this.catalog()),
      },
      {
        method: 'GET', path: '/api/packages', read: true,
        doc: {
          tag: 'compose', summary: "Search the distribution's package index (apt's Packages files, cached)",
          query: { distribution: { description: 'debian or ubuntu', required: true }, release: { description: 'e.g. bookworm', required: true }, architecture: { description: 'e.g. amd64', required: true }, q: { description: 'part of a package name or description', required: true }, limit: { description: 'at most this many results (default 50, at most 500)' } },
          response: { status: 200, description: 'PackageSearch: the index used and the matching packages' },
        },
        handler: async ({ res, url }) => {
          const d = oneOf(query(url, 'distribution'), DISTRIBUTIONS, 'distribution') as Distribution;
          const a = oneOf(query(url, 'architecture'), ARCHITECTURES, 'architecture') as Architecture;
          const release = query(url, 'release');
          if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(release)) throw invalidArgument(`release ${JSON.stringify(release)} is not a release name`);
          const limit = Math.min(500, Math.max(1, Number(url.searchParams.get('limit') ?? 50) || 50));
          // Only a release the catalogue knows may make apt fetch an index (a request cannot make it chase any name).
          const known = (await this.catalog()).distributions.find((x) => x.name === d)?.releases.includes(release) ?? false;
          if (!known && (d === 'debian' || d === 'ubuntu')) throw new OsfarmError('OSFARM_NOT_FOUND', `${release} is not a release of ${d} that the archive serves (see GET /api/distributions): no package index`);
          const req = { distribution: d, release, architecture: a, sources: { mirrors: [], components: ['main'], gpgCheck: true }, fetch: 'host' as const };
          sendJson(res, 200, await this.packages.search(req, url.searchParams.get('q') ?? '', limit));
        },
      },
      {
        method: 'POST', path: '/api/specs/check', read: true,
        doc: {
          tag: 'compose', summary: 'Validate a spec (its fields, its release, its package names against the real index): its request checksum, canonical form, and the images already built from it',
          body: { spec: { description: 'the spec as a JSON object', type: 'object' }, text: { description: 'or the spec as text' }, format: { description: 'yaml, json or xml (sniffed if absent)' } },
          response: { status: 200, description: 'SpecCheck: { specDigest, spec, built: Image[] }; 422 with issues for an invalid spec (a misspelt package: an issue at spec.packages[i] naming the closest packages)' },
        },
        handler: async ({ req, res }) => {
          const spec = webSpec(await readJson(req), this.o.repo);
          await this.checkSources(spec);
          const digest = specDigest(spec);
          const built = imagesOfRequest(this.repo(), digest).map(imageView);
          sendJson(res, 200, { specDigest: digest, spec: canonicalSpec(spec), built });
        },
      },
      {
        method: 'POST', path: '/api/builds',
        doc: {
          tag: 'jobs', summary: "Queue a build of a spec; it runs in the server, or on a build farm's workers (closing the page does not stop it)",
          body: { spec: { description: 'the spec as a JSON object', type: 'object' }, text: { description: 'or the spec as text' }, format: { description: 'yaml, json or xml' } },
          response: { status: 202, description: 'Job; 422 for an invalid spec, 503 when the queue is full' },
        },
        handler: async ({ req, res }) => {
          const spec = webSpec(await readJson(req), this.o.repo);
          await this.checkSources(spec);
          const digest = specDigest(spec);
          const title = `${spec.name} (${spec.distribution} ${spec.release} ${spec.architecture})`;
          const meta = { specDigest: digest, name: spec.name };
          const info = this.o.farm
            ? await this.o.farm.submitBuild(spec, title, meta)
            : await this.localBuilds!.submit('build', title, ({ signal, emit }) =>
                runBuildJob(spec, { repo: this.o.repo, workDir: this.o.workDir, stages: this.o.stages, signal, emit }), meta);
          sendJson(res, 202, info, { location: `/api/jobs/${info.id}` });
        },
      },
      {
        method: 'GET', path: '/api/jobs', read: true,
        doc: { tag: 'jobs', summary: 'Every build, transfer and boot job the server remembers, newest first', response: { status: 200, description: '{ jobs: Job[] }' } },
        handler: async ({ res }) => {
          const jobs = [...(await this.builds.list()), ...(await this.transfers.list()), ...(await this.boots.list())].sort((a, b) => b.created.localeCompare(a.created));
          sendJson(res, 200, { jobs });
        },
      },
      {
        method: 'GET', path: '/api/farm', read: true,
        doc: { tag: 'jobs', summary: "The build farm: its scheduling and its workers (alive or not, the job each runs); null when builds run in this server", response: { status: 200, description: '{ farm: { scheduling, workers } | null }' } },
        handler: async ({ res }) => {
          const farm = this.o.farm;
          sendJson(res, 200, { farm: farm ? { scheduling: farm.scheduling, workers: await farm.workers() } : null });
        },
      },
      {
        method: 'POST', path: '/api/farm/probes',
        doc: {
          tag: 'jobs', summary: 'Queue a probe on the build farm: a job that only waits `ms` on whichever worker takes it (checks the farm end to end; its `started` minus `created` is the queue\'s overhead)',
          body: { ms: { description: `how long the worker waits, 0 to ${MAX_PROBE_MS} ms (default 0)`, type: 'number' } },
          response: { status: 202, description: 'Job; 400 when builds run in this server (no farm)' },
        },
        handler: async ({ req, res }) => {
          const body = await readJson(req, 4096);
          const ms = body.ms ?? 0;
          if (typeof ms !== 'number' || !Number.isInteger(ms) || ms < 0 || ms > MAX_PROBE_MS) throw invalidArgument(`ms must be a whole number of milliseconds from 0 to ${MAX_PROBE_MS}`);
          if (!this.o.farm) throw invalidArgument('probes are for a build farm: this server runs its builds itself (start it with osfarm serve --queue redis://host:port)');
          const info = await this.o.farm.submitProbe(ms);
          sendJson(res, 202, info, { location: `/api/jobs/${info.id}` });
        },
      },
      {
        method: 'GET', path: '/api/jobs/:id', read: true,
        doc: { tag: 'jobs', summary: "A job's state, phase, progress, result or error", response: { status: 200, description: 'Job' } },
        handler: async ({ res, params }) => sendJson(res, 200, (await this.job(params.id!)).info),
      },
      {
        method: 'GET', path: '/api/jobs/:id/events', read: true,
        doc: { tag: 'jobs', summary: "A job's events as Server-Sent Events: history (after Last-Event-ID), then live, then `end`", response: { status: 200, type: 'text/event-stream', description: 'events state, phase, log, progress, sample, output, result, error, end' } },
        handler: async ({ req, res, params }) => {
          const { queue } = await this.job(params.id!);
          const last = Number(req.headers['last-event-id'] ?? 0) || 0;
          await streamJob(queue, params.id!, res, last);
        },
      },
      {
        method: 'DELETE', path: '/api/jobs/:id',
        doc: { tag: 'jobs', summary: 'Cancel a queued or running job (a build tears its chroot down)', response: { status: 200, description: '{ cancelled: boolean, job: Job }' } },
        handler: async ({ res, params }) => {
          const { queue, info } = await this.job(params.id!);
          const cancelled = !isFinal(info.state) && (await queue.cancel(info.id));
          sendJson(res, 200, { cancelled, job: await queue.get(info.id) });
        },
      },
      {
        method: 'GET', path: '/api/images', read: true,
        doc: { tag: 'images', summary: 'The repository: every image with size, format and what built it', response: { status: 200, description: '{ images: Image[], stats }' } },
        handler: ({ res }) => {
          const repo = this.repo();
          sendJson(res, 200, { images: repo.list().map(imageView).reverse(), stats: repo.stats() });
        },
      },
      {
        method: 'GET', path: '/api/images/:ref', read: true,
        doc: { tag: 'images', summary: 'One image (by name, digest or digest prefix) with its metadata', response: { status: 200, description: 'Image with meta' } },
        handler: ({ res, params }) => {
          const e = this.image(params.ref!);
          sendJson(res, 200, { ...imageView(e), originalName: e.originalName ?? null, meta: e.meta ?? null });
        },
      },
      {
        method: 'GET', path: '/api/images/:ref/spec.json', read: true,
        doc: { tag: 'images', summary: 'The canonical spec the image was built from, as JSON', response: { status: 200, type: 'application/json', description: 'CanonicalSpec' } },
        handler: ({ res, params }) => sendJson(res, 200, requireBuildMeta(this.image(params.ref!), 'spec').spec),
      },
      {
        method: 'GET', path: '/api/images/:ref/spec.xml', read: true,
        doc: { tag: 'images', summary: 'The same spec in the XML spec form', response: { status: 200, type: 'application/xml', description: 'XML spec' } },
        handler: ({ res, params }) => sendText(res, 200, exportSpec(this.o.repo, params.ref!).xml, 'application/xml; charset=utf-8'),
      },
      {
        method: 'GET', path: '/api/images/:ref/log', read: true,
        doc: { tag: 'images', summary: "The image's build log (the end kept with the image)", response: { status: 200, type: 'text/plain', description: 'log text' } },
        handler: ({ res, params }) => {
          const log = requireBuildMeta(this.image(params.ref!), 'build log').buildLog;
          if (!log) throw new OsfarmError('OSFARM_NOT_FOUND', `image ${params.ref} has no build log`);
          sendText(res, 200, log.tail, 'text/plain; charset=utf-8');
        },
      },
      {
        method: 'GET', path: '/api/images/:ref/sbom', read: true,
        doc: { tag: 'images', summary: "The image's installed packages as an SBOM (docs/trust.md)", query: { format: { description: 'spdx (SPDX 2.3 JSON, default) or cyclonedx (CycloneDX 1.5 JSON)' } }, response: { status: 200, description: 'SPDX or CycloneDX document' } },
        handler: ({ res, url, params }) => {
          const format = url.searchParams.get('format') ?? 'spdx';
          if (format !== 'spdx' && format !== 'cyclonedx') throw invalidArgument(`format ${format}: use spdx or cyclonedx`);
          sendJson(res, 200, imageSbom(this.o.repo, params.ref!, format as SbomFormat));
        },
      },
      {
        method: 'GET', path: '/api/images/:ref/download', read: true,
        doc: { tag: 'images', summary: "The image's data, as a file download", response: { status: 200, type: 'application/octet-stream', description: 'image bytes' } },
        handler: async ({ req, res, params }) => {
          const e = this.image(params.ref!);
          const file = (e.name ?? e.originalName ?? `${e.digest}.${e.format}`).replace(/[^A-Za-z0-9._+-]/g, '_');
          res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': e.size, 'content-disposition': `attachment; filename="${file}"`, etag: `"${e.digest}"` });
          if (req.method === 'HEAD') return void res.end();
          await pipeline(createReadStream(e.path), res);
        },
      },
      {
        method: 'DELETE', path: '/api/images/:ref',
        doc: { tag: 'images', summary: 'Remove an image (blocks other images share stay)', response: { status: 200, description: '{ removed: Image }' } },
        handler: async ({ res, params }) => sendJson(res, 200, { removed: imageView((await removeImage(this.o.repo, params.ref!)).image) }),
      },
      {
        method: 'POST', path: '/api/images/:ref/tags',
        doc: { tag: 'images', summary: 'Give the image a tag (name); a tag another image had moves here, kept in its history (docs/trust.md)', body: { tag: { description: 'the tag', required: true } }, response: { status: 200, description: '{ image: Image, moves }' } },
        handler: async ({ req, res, params }) => {
          const body = await readJson(req, 4096);
          const r = tagImage(this.o.repo, params.ref!, [field(body, 'tag')]);
          sendJson(res, 200, { image: imageView(r.image), moves: r.moves });
        },
      },
      {
        method: 'DELETE', path: '/api/images/:ref/tags/:tag',
        doc: { tag: 'images', summary: 'Remove a tag from the image; the image stays (by digest and its other tags)', response: { status: 200, description: '{ image: Image, moves }' } },
        handler: ({ res, params }) => {
          if (!this.image(params.ref!).tags.includes(params.tag!)) throw new OsfarmError('OSFARM_NOT_FOUND', `image ${params.ref} has no tag '${params.tag}'`);
          const r = untagImage(this.o.repo, params.tag!);
          sendJson(res, 200, { image: imageView(r.image), moves: r.moves });
        },
      },
      {
        method: 'GET', path: '/api/stages', read: true,
        doc: { tag: 'stages', summary: 'The stage store: each stage with parent, sizes, hits and last use', response: { status: 200, description: '{ root, backend, totalOwnSize, stages }' } },
        handler: async ({ res }) => sendJson(res, 200, await stageSummary(this.o.stages)),
      },
      {
        method: 'POST', path: '/api/stages/gc',
        doc: { tag: 'stages', summary: 'Remove least recently used stages until the store fits (never one in use)', body: { maxSize: { description: 'bound like 20G or 500M, or bytes', required: true }, dryRun: { description: 'only say what would go', type: 'boolean' } }, response: { status: 200, description: 'GcResult' } },
        handler: async ({ req, res }) => {
          const body = await readJson(req);
          const max = body.maxSize;
          if (typeof max !== 'string' && typeof max !== 'number') throw invalidArgument('maxSize is required: a size like 20G or 500M, or a number of bytes');
          const maxSize = parseSize(max, 'maxSize');
          if (body.dryRun !== undefined && typeof body.dryRun !== 'boolean') throw invalidArgument('dryRun must be true or false');
          sendJson(res, 200, await gcStages(this.o.stages, { maxSize, dryRun: body.dryRun === true }));
        },
      },
      {
        method: 'GET', path: '/api/compare', read: true,
        doc: { tag: 'compare', summary: "Two images' common blocks, both ways", query: { a: { description: 'image name or digest', required: true }, b: { description: 'image name or digest', required: true } }, response: { status: 200, description: 'CompareResult with both images' } },
        handler: async ({ res, url }) => {
          const a = this.image(query(url, 'a'));
          const b = this.image(query(url, 'b'));
          const r = await compare(a.indexPath, b.indexPath);
          sendJson(res, 200, { ...r, images: { a: imageView(a), b: imageView(b) } });
        },
      },
      {
        method: 'GET', path: '/api/compare/packages', read: true,
        doc: { tag: 'compare', summary: 'The packages image b adds, removes and changes against image a (docs/trust.md)', query: { a: { description: 'image name or digest', required: true }, b: { description: 'image name or digest', required: true } }, response: { status: 200, description: '{ a, b, added, removed, changed, unchanged }' } },
        handler: ({ res, url }) => sendJson(res, 200, diffImages(this.o.repo, query(url, 'a'), query(url, 'b'))),
      },
      {
        method: 'POST', path: '/api/transfers/push',
        doc: {
          tag: 'transfer', summary: "Push an image to another osfarm node's receiver (only the blocks it lacks); `sample` events carry wire bytes and blocks sent",
          body: { image: { description: 'image name or digest here', required: true }, address: { description: "the receiver's host:port", required: true }, token: { description: "the receiver's token" }, insecure: { description: 'the receiver runs without a token', type: 'boolean' }, name: { description: 'name at the receiver' } },
          response: { status: 202, description: 'Job' },
        },
        handler: async ({ req, res }) => {
          const body = await readJson(req);
          const entry = this.image(field(body, 'image'));
          const address = field(body, 'address');
          const token = optField(body, 'token');
          const name = optField(body, 'name');
          if (body.insecure !== undefined && typeof body.insecure !== 'boolean') throw invalidArgument('insecure must be true or false');
          if (!token && body.insecure !== true) throw invalidArgument('give the receiver\'s token, or insecure: true for a receiver without one');
          const info = await this.transfers.submit('push', `push ${entry.name ?? entry.digest.slice(0, 12)} to ${address}`, async ({ signal, emit }) => {
            const sample = sampler(emit);
            const r = await push(entry.digest, address, {
              repo: this.o.repo,
              signal,
              ...(token ? { token } : { insecure: true }),
              ...(name ? { name } : {}),
              onEvent: (e) => {
                if (e.type !== 'progress') return;
                emit({ type: 'progress', phase: 'push', done: e.done, total: e.total });
                sample({ wireBytes: e.wireBytesSent, blocks: e.blocksSent });
              },
            });
            sample({ wireBytes: r.wireBytesSent, blocks: r.blocksSent }, true);
            return r;
          }, { image: entry.digest, address });
          sendJson(res, 202, info, { location: `/api/jobs/${info.id}` });
        },
      },
      {
        method: 'POST', path: '/api/transfers/pull',
        doc: {
          tag: 'transfer', summary: "Pull an image from another osfarm node's HTTP endpoints (only the blocks this repository lacks); `sample` events carry the bytes fetched",
          body: { url: { description: 'http://node:port/images/<name or digest>', required: true }, name: { description: 'name here' } },
          response: { status: 202, description: 'Job' },
        },
        handler: async ({ req, res }) => {
          const body = await readJson(req);
          const url = field(body, 'url');
          const name = optField(body, 'name');
          parseImageUrl(url); // refuse a malformed URL now, not in the job
          const info = await this.transfers.submit('pull', `pull ${url}`, async ({ signal, emit }) => {
            const sample = sampler(emit);
            const r = await pull(url, {
              repo: this.o.repo,
              signal,
              ...(name ? { name } : {}),
              onEvent: (e) => {
                if (e.type !== 'progress') return;
                emit({ type: 'progress', phase: e.phase, done: e.done, total: e.total });
                sample({ wireBytes: e.bytesFetched });
              },
            });
            sample({ wireBytes: r.bytesFetched }, true);
            return r;
          }, { url });
          sendJson(res, 202, info, { location: `/api/jobs/${info.id}` });
        },
      },
      ...bootRoutes({ queue: this.boots, repo: this.o.repo, workDir: this.o.workDir, image: (ref) => this.image(ref) }),
    ];
  }
}

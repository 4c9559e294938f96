/**
 * The environment osfarm reads, in one place: every $OSFARM_* variable, $SOURCE_DATE_EPOCH
 * and the XDG directories. An empty variable counts as unset.
 */
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';

import { OsfarmError } from './errors.js';

type Env = NodeJS.ProcessEnv;

function read(name: string, environment: Env = process.env): string | undefined {
  const v = environment[name];
  return v === undefined || v === '' ? undefined : v;
}

/** Where a repository lives when no path is given: `$OSFARM_REPO`, else `./osfarm-repo`. */
export const DEFAULT_REPOSITORY = './osfarm-repo';

/** The repository path when none is given: `$OSFARM_REPO`, else `./osfarm-repo`. */
export function defaultRepositoryPath(environment: Env = process.env): string {
  return read('OSFARM_REPO', environment) ?? DEFAULT_REPOSITORY;
}

/** The repository path to use: the one given (--repo, an option), else the default. */
export function repositoryPath(given?: string): string {
  return given || defaultRepositoryPath();
}

/** The stage store directory: the one given, else $OSFARM_STAGES, else `<repository>/stages`; absolute. */
export function stagesPath(opts: { root?: string; repo?: string } = {}): string {
  const root = opts.root || read('OSFARM_STAGES') || join(repositoryPath(opts.repo), 'stages');
  return isAbsolute(root) ? root : resolve(root);
}

/** The stage store's size bound from $OSFARM_STAGES_MAX (10G, 500M…), if set. */
export function stagesMaxSize(): string | undefined {
  return read('OSFARM_STAGES_MAX');
}

/** Build scratch space and package caches: $OSFARM_WORK, else $XDG_CACHE_HOME/osfarm or ~/.cache/osfarm. */
export function defaultWorkDir(): string {
  const work = read('OSFARM_WORK');
  if (work) return resolve(work);
  return join(read('XDG_CACHE_HOME') ?? join(homedir(), '.cache'), 'osfarm');
}

/** The web token file: $XDG_CONFIG_HOME/osfarm/web-token or ~/.config/osfarm/web-token (never inside a repository, which may be served or copied). */
export function defaultTokenFile(environment: Env = process.env): string {
  return join(read('XDG_CONFIG_HOME', environment) ?? join(homedir(), '.config'), 'osfarm', 'web-token');
}

/** The push token from $OSFARM_TOKEN, if set. */
export function tokenFromEnv(environment: Env = process.env): string | undefined {
  return read('OSFARM_TOKEN', environment);
}

/** Package sources from $OSFARM_MIRROR: URLs (or `deb …` lines) separated by commas, or by spaces before a URL. */
export function mirrorsFromEnv(): string[] {
  return (read('OSFARM_MIRROR') ?? '').split(/\s*,\s*|\s+(?=\w+:\/\/)/).filter(Boolean);
}

/** The RPM signing keys to trust from $OSFARM_RPM_GPGKEYS: URLs separated by white space. */
export function rpmGpgKeysFromEnv(): string[] {
  return (read('OSFARM_RPM_GPGKEYS') ?? '').split(/\s+/).filter(Boolean);
}

/** $OSFARM_DEBUG: print stack traces of internal errors. */
export function debugEnabled(): boolean {
  return read('OSFARM_DEBUG') !== undefined;
}

/** A valid $SOURCE_DATE_EPOCH (whole seconds), undefined if unset; OSFARM_INVALID_ARGUMENT if malformed. */
export function sourceDateEpochFromEnv(): number | undefined {
  const v = read('SOURCE_DATE_EPOCH');
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `$SOURCE_DATE_EPOCH must be a whole number of seconds (is ${JSON.stringify(v)})`);
  return Number(v);
}

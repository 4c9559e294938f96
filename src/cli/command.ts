/**
 * The command table's types: every command is one file in commands/ that exports one
 * `Command` as its default. Parsing, --help, shell completion and the man page are all
 * made from these objects (table.ts, parse.ts, help.ts, completion.ts, man.ts).
 */
import { invalidArgument } from '../base/errors.js';

/** One flag of a command. */
export interface Flag {
  type: 'string' | 'boolean';
  short?: string;
  /** May be given more than once (the values are collected in order). */
  multiple?: boolean;
  /** The value's placeholder in --help and the man page: N, DIR, HOST:PORT. */
  value?: string;
  /** One line (no final period) for --help, the man page and completion. */
  description: string;
  /** The only values it takes: completion offers them, and --help lists them. */
  choices?: readonly string[];
  /** What completion offers for the value when there are no choices. */
  complete?: 'file' | 'dir';
}

export type Flags = Record<string, Flag>;

export interface Example {
  /** The whole command line, starting with `osfarm`. */
  command: string;
  /** What it does, one line. */
  what: string;
}

export interface ParsedArgs {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

/** A progress display for one long step. Silent with --json, --quiet, or when stderr is no terminal. */
export interface ProgressDisplay {
  update(done: number, total: number, detail?: string): void;
  done(): void;
}

/** A line of a --json stream: every line has a `type`; the last is `result` or `error` (docs/cli.md). */
export interface CliEvent {
  type: string;
}

export interface CommandContext {
  /** Machine-readable output: NDJSON events, then `{"type":"result","result":…}` on stdout. */
  json: boolean;
  /** --quiet: no information lines and no progress, only results and errors. */
  quiet: boolean;
  /** --verbose: more detail on stderr (a build's log lines, an error's cause). */
  verbose: boolean;
  /** The repository directory (--repo, $OSFARM_REPO, or ./osfarm-repo). */
  repoPath: string;
  /** Aborted on Ctrl-C (SIGINT) or SIGTERM. */
  signal: AbortSignal;
  /** Writes one event line in --json mode; nothing otherwise. */
  event<E extends CliEvent>(event: E): void;
  /** A progress bar on the terminal for one step (`unit` bytes by default, or a count of items). */
  progress(label: string, unit?: 'bytes' | 'items'): ProgressDisplay;
  /** A line of information on stderr (not with --json or --quiet). */
  info(line: string): void;
  /** A line of detail on stderr with --verbose only. */
  detail(line: string): void;
}

/** The section a top-level command is listed under in --help and the man page. */
export type Section = 'build' | 'repository' | 'transfer' | 'shell';

export interface Command<R = unknown> {
  name: string;
  /** Other names it answers to (`repo list` for `repo ls`). */
  aliases?: string[];
  /** One line, lower case, no final period. */
  summary: string;
  /** Top-level commands only: where --help lists it. */
  section?: Section;
  /** Usage lines after `osfarm <command path>`, e.g. `IMAGE HOST:PORT [flags]`. */
  usage: string[];
  /** Longer text for --help and the man page (paragraphs separated by blank lines). */
  description?: string;
  /** Its flags (the global ones, table.ts, come on top). */
  options?: Flags;
  /** It takes operands; `complete` says what completion offers for them. */
  operands?: { complete: 'file' | 'dir' | 'none'; min?: number; max?: number };
  /** At least one for a command that runs. */
  examples?: Example[];
  /** Sub-commands (`repo add`); a command with sub-commands has no `run`. */
  subcommands?: Command[];
  run?(args: ParsedArgs, ctx: CommandContext): Promise<R>;
  /** The human form of the result (the JSON form is the result itself). */
  render?(result: R): string;
}

/** A string option's value, or undefined. */
export function str(args: ParsedArgs, name: string): string | undefined {
  const v = args.values[name];
  return typeof v === 'string' ? v : undefined;
}

/** All values of a repeatable string option. */
export function strs(args: ParsedArgs, name: string): string[] {
  const v = args.values[name];
  if (v === undefined || typeof v === 'boolean') return [];
  return Array.isArray(v) ? v : [v];
}

/**
 * A whole-number option from `min` to `max`, or undefined when not given. Out of range is
 * refused, never clamped or wrapped (a huge timeout would overflow a timer to 1 ms).
 */
export function wholeNumber(args: ParsedArgs, name: string, min: number, max: number): number | undefined {
  const text = str(args, name);
  if (text === undefined) return undefined;
  const n = /^\d{1,16}$/.test(text) ? Number(text) : NaN;
  if (!(n >= min && n <= max)) {
    throw invalidArgument(`--${name}: '${text}' is not a whole number from ${min} to ${max}`);
  }
  return n;
}

/** A boolean flag. */
export function flag(args: ParsedArgs, name: string): boolean {
  return args.values[name] === true;
}

/** `fn` called at most once per `ms` (progress events in --json mode stay a few per second). */
export function throttled<T>(fn: (value: T) => void, ms = 1000): (value: T) => void {
  let last = 0;
  return (value) => {
    const now = Date.now();
    if (now - last < ms) return;
    last = now;
    fn(value);
  };
}

/** Waits until Ctrl-C or SIGTERM (the long-running commands: serve, receive). */
export function untilAborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    signal.addEventListener('abort', () => resolve(), { once: true });
  });
}

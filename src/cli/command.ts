import type { ParseArgsConfig } from 'node:util';
import { invalidArgument } from '../base/errors.js';

/** Options in node:util parseArgs form. */
export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export interface ParsedArgs {
  values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  positionals: string[];
}

/** A progress display for one long step. Silent with --json or when stderr is no terminal. */
export interface ProgressDisplay {
  update(done: number, total: number, detail?: string): void;
  done(): void;
}

export interface CommandContext {
  /** Machine-readable output: the result as JSON on stdout, events as NDJSON. */
  json: boolean;
  /** The repository directory (--repo, $OSFARM_REPO, or ./osfarm-repo). */
  repoPath: string;
  /** Aborted on Ctrl-C (SIGINT) or SIGTERM. */
  signal: AbortSignal;
  /** Emits a machine-readable event line in --json mode; no-op otherwise. */
  event(event: Record<string, unknown>): void;
  /** A progress bar on the terminal for one step. */
  progress(label: string): ProgressDisplay;
  /** A line of human-readable information on stderr (silent with --json). */
  info(line: string): void;
}

export interface Command<R = unknown> {
  name: string;
  /** One line for --help. Top-level commands' summaries live in the registry (commands/index.ts). */
  summary?: string;
  /** Usage lines shown by --help, without the leading "osfarm". */
  usage: string;
  options?: OptionSpec;
  allowPositionals?: boolean;
  /** Sub-commands (e.g. `repo add`); when set, `run` is not used. */
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
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).filter((x): x is string => typeof x === 'string');
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

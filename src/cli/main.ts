#!/usr/bin/env node
/** The `osfarm` command line: finds the command in the table, parses its flags, runs it, prints its result or error. */
import { debugEnabled, repositoryPath } from '../base/env.js';
import { invalidArgument, type OsfarmError, toOsfarmError } from '../base/errors.js';
import { didYouMean } from '../base/suggest.js';
import { SOFTWARE } from '../base/version.js';
import type { CliEvent, Command, CommandContext, ParsedArgs } from './command.js';
import { commandHelp, topHelp, usageLines } from './help.js';
import { parseFlags } from './parse.js';
import { progressBar } from './progress.js';
import { commandNames, GLOBAL_FLAGS, loadAll, loadCommand, subcommand } from './table.js';

/** Exit status of a usage mistake (as most tools: 2), and of any other failure. */
const USAGE = 2;
const FAILED = 1;

function write(stream: NodeJS.WriteStream, text: string): void {
  stream.write(text.endsWith('\n') ? text : `${text}\n`);
}

function makeContext(args: ParsedArgs, signal: AbortSignal): CommandContext {
  const json = args.values.json === true;
  const quiet = args.values.quiet === true;
  const verbose = args.values.verbose === true && !quiet;
  return {
    json,
    quiet,
    verbose,
    repoPath: repositoryPath(typeof args.values.repo === 'string' ? args.values.repo : undefined),
    signal,
    event(event: CliEvent) {
      if (json) process.stdout.write(`${JSON.stringify(event)}\n`);
    },
    progress(label, unit = 'bytes') {
      return progressBar(label, !json && !quiet, unit);
    },
    info(line) {
      if (!json && !quiet) process.stderr.write(`${line}\n`);
    },
    detail(line) {
      if (verbose && !json) process.stderr.write(`${line}\n`);
    },
  };
}

function fail(err: unknown, json: boolean, verbose: boolean): never {
  const e: OsfarmError = toOsfarmError(err);
  if (json) process.stdout.write(`${JSON.stringify({ type: 'error', error: { code: e.code, message: e.message } })}\n`);
  else process.stderr.write(`osfarm: ${e.message} (${e.code})\n`);
  // --verbose: what caused it; the stack only of a bug (or with $OSFARM_DEBUG).
  if (verbose || debugEnabled()) for (let c = e.cause; c instanceof Error; c = c.cause) process.stderr.write(`  caused by: ${c.message}\n`);
  if ((verbose && e.code === 'OSFARM_INTERNAL') || debugEnabled()) {
    if (err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  }
  process.exit(e.code === 'OSFARM_INVALID_ARGUMENT' ? USAGE : FAILED);
}

/**
 * The global flags written before the command word (`osfarm --json --repo r build …`):
 * how many words they take. They are parsed with the command's flags afterwards.
 */
function leadingGlobals(argv: string[]): number {
  let i = 0;
  while (i < argv.length && argv[i]!.startsWith('-') && argv[i] !== '--version' && argv[i] !== '-V') {
    i += argv[i] === '--repo' ? 2 : 1;
  }
  return Math.min(i, argv.length);
}

export async function main(argv: string[]): Promise<void> {
  const json = argv.includes('--json');
  const verbose = argv.includes('--verbose') || argv.includes('-v');
  try {
    if (argv[0] === '--version' || argv[0] === '-V') {
      write(process.stdout, SOFTWARE);
      return;
    }
    const n = leadingGlobals(argv);
    const globals = parseFlags(argv.slice(0, n), GLOBAL_FLAGS, '', false);
    let rest = argv.slice(n);
    // `osfarm help build` is `osfarm build --help`.
    let asked = globals.values.help === true;
    if (rest[0] === 'help') {
      asked = true;
      rest = rest.slice(1);
    }
    const word = rest[0];
    if (word === undefined) {
      const text = topHelp(await loadAll());
      if (asked) return write(process.stdout, text);
      write(process.stderr, text);
      process.exit(USAGE);
    }
    if (!commandNames().includes(word)) {
      throw invalidArgument(`unknown command '${word}'${didYouMean(word, commandNames(), 2)}; osfarm --help lists the commands`);
    }
    let cmd: Command = await loadCommand(word);
    const path = [word];
    rest = rest.slice(1);
    while (cmd.subcommands) {
      const next = rest[0];
      if (next === undefined || next.startsWith('-')) {
        // `osfarm repo`, `osfarm repo --help`: the sub-commands.
        const text = commandHelp(cmd, path);
        if (asked || rest.includes('--help') || rest.includes('-h')) return write(process.stdout, text);
        write(process.stderr, text);
        process.exit(USAGE);
      }
      const sub = subcommand(cmd, next);
      if (!sub) {
        const names = cmd.subcommands.flatMap((s) => [s.name, ...(s.aliases ?? [])]);
        throw invalidArgument(`unknown command '${path.join(' ')} ${next}'${didYouMean(next, names, 2)}; osfarm ${path.join(' ')} --help lists its commands`);
      }
      cmd = sub;
      path.push(sub.name);
      rest = rest.slice(1);
    }
    const args = parseFlags([...argv.slice(0, n), ...rest], { ...GLOBAL_FLAGS, ...cmd.options }, path.join(' '), cmd.operands !== undefined);
    if (args.values.help === true || asked) return write(process.stdout, commandHelp(cmd, path));
    const count = args.positionals.length;
    const { min = 0, max = Number.POSITIVE_INFINITY } = cmd.operands ?? {};
    if (count < min || count > max) {
      const want = min === max ? `${min}` : max === Number.POSITIVE_INFINITY ? `at least ${min}` : `${min} to ${max}`;
      throw invalidArgument(`osfarm ${path.join(' ')} takes ${want} operand${max === 1 ? '' : 's'}, got ${count}: ${usageLines(cmd, path).join(' | ')}`);
    }
    await runCommand(cmd, args);
  } catch (err) {
    fail(err, json, verbose);
  }
}

async function runCommand(cmd: Command, args: ParsedArgs): Promise<void> {
  const controller = new AbortController();
  const onSignal = () => controller.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const ctx = makeContext(args, controller.signal);
  try {
    const result = await cmd.run!(args, ctx);
    if (ctx.json) ctx.event({ type: 'result', result: result ?? null });
    else if (cmd.render && result !== undefined) {
      const text = cmd.render(result);
      if (text) write(process.stdout, text);
    }
  } catch (err) {
    fail(err, ctx.json, ctx.verbose);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

await main(process.argv.slice(2));

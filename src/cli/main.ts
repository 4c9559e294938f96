#!/usr/bin/env node
/** The `osfarm` command line: global flags, dispatch, output and errors. */
import { parseArgs } from 'node:util';

import { debugEnabled, repositoryPath } from '../base/env.js';
import { errorJson, invalidArgument, toOsfarmError } from '../base/errors.js';
import { SOFTWARE } from '../base/version.js';
import type { Command, CommandContext, OptionSpec, ParsedArgs } from './command.js';
import { commands } from './commands/index.js';
import { progressBar } from './progress.js';

const GLOBAL_OPTIONS: OptionSpec = {
  json: { type: 'boolean' },
  repo: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
};

function helpText(cmd?: Command, path: string[] = [], summary = cmd?.summary ?? ''): string {
  if (!cmd) {
    const width = Math.max(...commands.map((c) => c.name.length));
    return [
      'osfarm: build, cache and move Linux images by their blocks',
      '',
      'usage: osfarm <command> [options]',
      '',
      ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
      '',
      'global options: --json (machine-readable output)  --repo DIR (default $OSFARM_REPO or ./osfarm-repo)  -h, --help',
      'osfarm <command> --help shows a command\'s options.',
    ].join('\n');
  }
  const lines = [summary, '', ...cmd.usage.split('\n').map((u) => `usage: osfarm ${[...path, u].join(' ')}`)];
  if (cmd.subcommands) {
    lines.push('', ...cmd.subcommands.map((s) => `  ${[...path, cmd.name, s.name].join(' ')}  ${s.summary ?? ''}`));
  }
  return lines.join('\n');
}

function makeContext(json: boolean, repo: string | undefined, signal: AbortSignal): CommandContext {
  return {
    json,
    repoPath: repositoryPath(repo),
    signal,
    event(event) {
      if (json) process.stdout.write(`${JSON.stringify(event)}\n`);
    },
    progress(label) {
      return progressBar(label, !json);
    },
    info(line) {
      if (!json) process.stderr.write(`${line}\n`);
    },
  };
}

/** Finds (and loads) the command and sub-command named by the leading words of argv. */
async function resolveCommand(argv: string[]): Promise<{ cmd?: Command; summary: string; path: string[]; rest: string[] }> {
  // Global options may come before the command: move them after it.
  const leading: string[] = [];
  while (argv[0] === '--json' || argv[0] === '--repo' || argv[0]?.startsWith('--repo=')) {
    const n = argv[0] === '--repo' ? 2 : 1;
    leading.push(...argv.slice(0, n));
    argv = argv.slice(n);
  }
  const entry = commands.find((c) => c.name === argv[0]);
  if (!entry) return { summary: '', path: [], rest: [...argv, ...leading] };
  let cmd: Command = (await entry.load()).default;
  let summary = entry.summary;
  const path = [entry.name];
  let i = 1;
  while (cmd.subcommands && i < argv.length) {
    const sub = cmd.subcommands.find((c) => c.name === argv[i]);
    if (!sub) break;
    cmd = sub;
    summary = sub.summary ?? '';
    path.push(sub.name);
    i++;
  }
  return { cmd, summary, path, rest: [...argv.slice(i), ...leading] };
}

function exitWithError(err: unknown, json: boolean): never {
  const { code, message } = toOsfarmError(err);
  if (json) process.stdout.write(`${JSON.stringify(errorJson(err))}\n`);
  else process.stderr.write(`osfarm: ${message} (${code})\n`);
  if (code === 'OSFARM_INTERNAL' && err instanceof Error && debugEnabled()) process.stderr.write(`${err.stack}\n`);
  process.exit(code === 'OSFARM_INVALID_ARGUMENT' ? 2 : 1);
}

export async function main(argv: string[]): Promise<void> {
  if (argv[0] === '--version' || argv[0] === '-V') {
    process.stdout.write(`${SOFTWARE}\n`);
    return;
  }
  const json = argv.includes('--json');
  const { cmd, summary, path, rest } = await resolveCommand(argv);
  if (!cmd) {
    if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
      process.stdout.write(`${helpText()}\n`);
      return;
    }
    exitWithError(invalidArgument(`unknown command '${argv[0]}': run osfarm --help for the list`), json);
  }
  if (cmd.subcommands || !cmd.run) {
    if (rest.includes('--help') || rest.includes('-h') || rest.length === 0) {
      process.stdout.write(`${helpText(cmd, path.slice(0, -1), summary)}\n`);
      return;
    }
    exitWithError(invalidArgument(`unknown sub-command '${rest[0]}' of ${path.join(' ')}: run osfarm ${path.join(' ')} --help`), json);
  }
  let args: ParsedArgs;
  try {
    args = parseArgs({
      args: rest,
      options: { ...GLOBAL_OPTIONS, ...cmd.options },
      allowPositionals: cmd.allowPositionals ?? false,
      strict: true,
    }) as ParsedArgs;
  } catch (err) {
    exitWithError(invalidArgument(`${(err as Error).message}; run osfarm ${path.join(' ')} --help`), json);
  }
  if (args.values.help) {
    process.stdout.write(`${helpText(cmd, path.slice(0, -1), summary)}\n`);
    return;
  }
  const controller = new AbortController();
  const onSignal = () => controller.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const ctx = makeContext(json, args.values.repo as string | undefined, controller.signal);
  try {
    const result = await cmd.run(args, ctx);
    if (json) process.stdout.write(`${JSON.stringify(result ?? null)}\n`);
    else if (cmd.render && result !== undefined) {
      const text = cmd.render(result);
      if (text) process.stdout.write(`${text}\n`);
    }
  } catch (err) {
    exitWithError(err, json);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

await main(process.argv.slice(2));

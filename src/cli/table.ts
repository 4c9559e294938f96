/**
 * The command table: every file in commands/ is one top-level command (its file name is
 * the command's name), so adding a command is adding one file. A run loads only its own
 * command's module; --help, completion and the man page load them all.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';

import type { Command, Flags, Section } from './command.js';

/** The flags every command takes. */
export const GLOBAL_FLAGS: Flags = {
  repo: { type: 'string', value: 'DIR', complete: 'dir', description: 'the repository (default $OSFARM_REPO, else ./osfarm-repo)' },
  json: { type: 'boolean', description: 'machine-readable output: NDJSON events, then one {"type":"result"} or {"type":"error"} line (docs/cli.md)' },
  quiet: { type: 'boolean', short: 'q', description: 'print only results and errors: no progress, no information lines' },
  verbose: { type: 'boolean', short: 'v', description: 'print more detail on stderr (a build\'s log lines, an error\'s causes)' },
  help: { type: 'boolean', short: 'h', description: 'show this help' },
};

/** The order of the sections in --help and the man page, with their headings. */
export const SECTIONS: Record<Section, string> = {
  build: 'building images',
  repository: 'images and the repository',
  transfer: 'moving images between machines',
  shell: 'the shell',
};

const DIR = join(import.meta.dirname, 'commands');

/** The top-level command names, from the file names in commands/ (sorted). */
export function commandNames(): string[] {
  return readdirSync(DIR)
    .filter((f) => /\.(js|ts)$/.test(f) && !f.endsWith('.d.ts'))
    .map((f) => f.replace(/\.(js|ts)$/, ''))
    .sort();
}

/** One top-level command's table entry, loaded from its file. */
export async function loadCommand(name: string): Promise<Command> {
  const mod = (await import(`./commands/${name}.js`)) as { default: Command };
  return mod.default;
}

/** Every top-level command, in --help order: by section, then by name. */
export async function loadAll(): Promise<Command[]> {
  const all = await Promise.all(commandNames().map(loadCommand));
  const order = Object.keys(SECTIONS);
  return all.sort((a, b) => order.indexOf(a.section ?? 'shell') - order.indexOf(b.section ?? 'shell') || a.name.localeCompare(b.name));
}

/** A command's sub-command by name or alias. */
export function subcommand(cmd: Command, word: string): Command | undefined {
  return cmd.subcommands?.find((s) => s.name === word || s.aliases?.includes(word));
}

/** --help text, from the command table. */
import type { Command, Flag, Flags } from './command.js';
import { GLOBAL_FLAGS, SECTIONS } from './table.js';

/** `-o, --output FILE`, `--json`: a flag as written on a command line. */
export function flagSynopsis(name: string, f: Flag): string {
  const value = f.type === 'string' ? ` ${f.value ?? (f.choices ? f.choices.join('|') : 'VALUE')}` : '';
  return `${f.short ? `-${f.short}, ` : '    '}--${name}${value}`;
}

/** The description with its choices and repeatability, as --help and the man page show it. */
export function flagText(f: Flag): string {
  const extra: string[] = [];
  if (f.choices && f.value) extra.push(`one of ${f.choices.join(', ')}`);
  if (f.multiple) extra.push('may be repeated');
  return extra.length ? `${f.description} (${extra.join('; ')})` : f.description;
}

function flagLines(flags: Flags): string[] {
  const rows = Object.entries(flags).map(([n, f]) => [flagSynopsis(n, f), flagText(f)] as const);
  const width = Math.min(34, Math.max(...rows.map(([s]) => s.length)));
  return rows.map(([s, d]) => (s.length > width ? `  ${s}\n  ${' '.repeat(width)}  ${d}` : `  ${s.padEnd(width)}  ${d}`));
}

/** The usage lines of a command at `path` (the words after `osfarm`). */
export function usageLines(cmd: Command, path: string[]): string[] {
  if (cmd.subcommands) return [`osfarm ${path.join(' ')} <${cmd.subcommands.map((s) => s.name).join('|')}> [flags]`];
  return cmd.usage.map((u) => `osfarm ${path.join(' ')}${u ? ` ${u}` : ''}`);
}

/** `osfarm --help` (and the usage bare `osfarm` prints). */
export function topHelp(commands: Command[]): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  const lines = ['osfarm: build, cache and move Linux images by their blocks', '', 'usage: osfarm <command> [flags]'];
  for (const [section, heading] of Object.entries(SECTIONS)) {
    const inSection = commands.filter((c) => (c.section ?? 'shell') === section);
    if (inSection.length === 0) continue;
    lines.push('', `${heading}:`, ...inSection.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`));
  }
  lines.push('', 'flags of every command:', ...flagLines(GLOBAL_FLAGS));
  lines.push('', 'osfarm <command> --help shows a command\'s flags and examples; osfarm --version the version.');
  return lines.join('\n');
}

/** `osfarm <path> --help`. */
export function commandHelp(cmd: Command, path: string[]): string {
  const lines = [`osfarm ${path.join(' ')}: ${cmd.summary}`, '', ...usageLines(cmd, path).map((u, i) => `${i === 0 ? 'usage: ' : '       '}${u}`)];
  if (cmd.description) lines.push('', ...cmd.description.split('\n'));
  if (cmd.subcommands) {
    const width = Math.max(...cmd.subcommands.map((s) => s.name.length));
    lines.push('', 'commands:', ...cmd.subcommands.map((s) => `  ${s.name.padEnd(width)}  ${s.summary}${s.aliases?.length ? ` (also: ${s.aliases.join(', ')})` : ''}`));
    lines.push('', `osfarm ${path.join(' ')} <command> --help shows its flags and examples.`);
  }
  if (cmd.options && Object.keys(cmd.options).length > 0) lines.push('', 'flags:', ...flagLines(cmd.options));
  lines.push('', 'flags of every command:', ...flagLines(GLOBAL_FLAGS));
  if (cmd.examples?.length) {
    lines.push('', 'examples:');
    for (const e of cmd.examples) lines.push(`  ${e.command}`, `      ${e.what}`);
  }
  return lines.join('\n');
}

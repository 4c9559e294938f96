// @ts-check
// Repository: images with their tags, size and format; one image's tags (add, remove), spec (JSON, XML), build log, download, boot, delete.
import { action, api, bytes, el, notice, showError, short, when } from './lib.js';

export async function render(view, [ref], session) {
  const { images, stats } = await api('GET', '/api/images');
  const detail = el('div', { id: 'image-detail' });
  const rows = images.map((i) => el('tr', { 'data-digest': i.digest },
    el('td', { class: 'tags' }, el('a', { href: `#/repository/${i.digest}` }, i.tags.length ? i.tags.join(', ') : short(i.digest))),
    el('td', { class: 'mono' }, short(i.digest)),
    el('td', {}, i.format),
    el('td', { class: 'num' }, bytes(i.size)),
    el('td', {}, i.distribution ? `${i.distribution} ${i.release} ${i.architecture}` : '-'),
    // The whole chain: what the parents' stages installed (muted), then what this image's own stage adds.
    el('td', { class: 'packages' }, el('span', { class: 'muted' }, i.packages.filter((p) => !i.addedPackages.includes(p)).join(' ')), ' ', i.addedPackages.join(' ')),
    el('td', {}, when(i.added))));
  view.append(
    el('h1', {}, 'Repository'),
    el('p', { class: 'muted' }, `${stats.images} images, ${bytes(stats.totalBytes)} in total, ${bytes(stats.diskBytes)} on disk, ${stats.distinctBlocks} distinct blocks of ${bytes(stats.blockSize)}`),
    el('div', { class: 'card' }, images.length === 0 ? el('p', { class: 'muted' }, 'The repository is empty.') :
      el('table', { id: 'images' }, el('thead', {}, el('tr', {}, ['tags', 'digest', 'format', 'size', 'system', 'packages', 'added'].map((h) => el('th', { class: h === 'size' ? 'num' : '' }, h)))), el('tbody', {}, rows))),
    detail);
  if (!ref) return;

  const image = await api('GET', `/api/images/${encodeURIComponent(ref)}`);
  const body = el('pre', { id: 'image-view' });
  const tabs = el('div', { class: 'tabs row' });
  const show = async (label, path) => {
    for (const b of tabs.children) b.classList.toggle('active', b.textContent === label);
    try {
      const r = await fetch(path, { credentials: 'same-origin' });
      body.textContent = r.ok ? await r.text() : `(${label}: ${(await r.json()).error.message})`;
      if (label === 'spec JSON' && r.ok) body.textContent = JSON.stringify(JSON.parse(body.textContent), null, 2);
      // A log is read from its end.
      body.scrollTop = label === 'build log' ? body.scrollHeight : 0;
    } catch (err) {
      body.textContent = err.message;
    }
  };
  const base = `/api/images/${image.digest}`;
  for (const [label, path] of [['spec JSON', `${base}/spec.json`], ['spec XML', `${base}/spec.xml`], ['build log', `${base}/log`]]) {
    tabs.append(el('button', { onclick: () => show(label, path) }, label));
  }
  const del = el('button', { class: 'danger', id: 'delete', disabled: !session.authorized }, 'Delete');
  del.addEventListener('click', async () => {
    if (!confirm(`Delete ${image.name ?? image.digest}? Blocks other images share stay.`)) return;
    try {
      await api('DELETE', base);
      notice(`deleted ${image.name ?? image.digest}`, 'info');
      location.hash = '#/repository';
    } catch (err) {
      showError(err);
    }
  });
  // Archives cannot boot; a disk (or a file system holding a kernel, with kernel boot) can.
  const bootable = !['tar', 'tar.gz', 'squashfs'].includes(image.meta?.format ?? image.format);
  const firmware = el('select', { id: 'boot-firmware' }, [['', 'firmware: the image\'s'], ['uefi', 'UEFI'], ['bios', 'BIOS']].map(([v, label]) => el('option', { value: v }, label)));
  const kernelBoot = el('input', { type: 'checkbox', id: 'boot-kernel' });
  const bootButton = el('button', { id: 'boot', disabled: !session.authorized || !bootable, title: bootable ? 'start it under qemu and watch its console' : 'an archive does not boot' }, 'Boot');
  bootButton.addEventListener('click', action(bootButton, async () => {
    const job = await api('POST', `${base}/boot`, { ...(firmware.value ? { firmware: firmware.value } : {}), kernelBoot: kernelBoot.checked });
    location.hash = `#/boot/${job.id}`;
  }));
  const siblings = images.filter((i) => i.specDigest && i.specDigest === image.specDigest && i.digest !== image.digest);
  const stages = Array.isArray(image.meta?.stages) ? image.meta.stages : [];
  detail.append(el('div', { class: 'card' },
    el('h2', {}, image.name ?? image.digest),
    tagsRow(image, session),
    siblings.length ? el('p', { id: 'formats' }, 'other formats of this build: ', siblings.map((i) => el('a', { href: `#/repository/${i.digest}` }, `${i.format} (${bytes(i.size)}) `))) : null,
    stages.length ? el('p', { id: 'image-stages' }, 'stages: ', stages.map((s, n) => [n ? ' → ' : '', el('a', { href: '#/stages' }, el('code', {}, short(s.tag))), s.label ? ` ${s.label}` : ''])) : null,
    el('p', {}, el('code', {}, image.digest), ` · ${image.format} · ${bytes(image.size)} · ${image.blockCount} blocks · added ${when(image.added)}`),
    el('p', { class: 'row' }, el('a', { href: `${base}/download`, download: image.name ?? image.digest, id: 'download' }, 'Download'), el('a', { href: `#/compare/${image.digest}` }, 'Compare with…'), del),
    el('p', { class: 'row' }, bootButton, firmware, el('label', {}, kernelBoot, ' kernel boot')),
    tabs, body),
    installedCard(image.meta?.installed));
  await show('spec JSON', `${base}/spec.json`);
}

/** The image's tags, each removable, and a field that adds one (a tag another image has moves here). */
function tagsRow(image, session) {
  // The page is drawn again from the API (route() runs on hashchange; it clears the notice
  // before its first await, so a notice given after this stays).
  const reload = () => window.dispatchEvent(new HashChangeEvent('hashchange'));
  const chips = image.tags.map((t) => {
    const remove = el('button', { class: 'small', title: `remove the tag ${t} (the image stays)`, disabled: !session.authorized, 'data-untag': t }, '×');
    remove.addEventListener('click', action(remove, async () => {
      await api('DELETE', `/api/images/${image.digest}/tags/${encodeURIComponent(t)}`);
      reload();
    }));
    return el('span', { class: 'tag' }, el('code', {}, t), ' ', remove);
  });
  const input = el('input', { type: 'text', id: 'new-tag', placeholder: 'new tag', disabled: !session.authorized });
  const add = el('button', { id: 'add-tag', disabled: !session.authorized }, 'Add tag');
  add.addEventListener('click', action(add, async () => {
    if (!input.value.trim()) return;
    const r = await api('POST', `/api/images/${image.digest}/tags`, { tag: input.value.trim() });
    reload();
    for (const m of r.moves) if (m.previous) notice(`tag ${m.name} moved here from ${short(m.previous)}`, 'info');
  }));
  return el('p', { id: 'image-tags' }, 'tags: ', chips.length ? chips : el('span', { class: 'muted' }, 'none'), input, add);
}

/** The image's installed packages with their versions (recorded by its build), searchable. */
function installedCard(installed) {
  if (!Array.isArray(installed)) return el('div', { class: 'card muted', id: 'installed' }, 'No package list: the image was not built by this osfarm (or its package database could not be read).');
  const filter = el('input', { type: 'search', id: 'installed-filter', placeholder: `search ${installed.length} packages` });
  const tbody = el('tbody', {});
  const draw = () => {
    const q = filter.value.trim().toLowerCase();
    tbody.replaceChildren(...installed.filter((p) => !q || p.name.includes(q)).map((p) => el('tr', {}, el('td', {}, p.name), el('td', { class: 'mono' }, p.version))));
  };
  filter.addEventListener('input', draw);
  draw();
  return el('div', { class: 'card', id: 'installed' }, el('h2', {}, `Installed packages (${installed.length})`), filter,
    el('div', { class: 'results' }, el('table', { id: 'installed-table' }, el('thead', {}, el('tr', {}, el('th', {}, 'package'), el('th', {}, 'version'))), tbody)));
}

/** Small DOM helpers: text is always set as text, never parsed as HTML. */

export type Child = Node | string;

/** `<tag class="className">children</tag>` */
export function h(tag: string, className: string, ...children: Child[]): HTMLElement {
  const element = document.createElement(tag);
  element.className = className;
  element.append(...children);
  return element;
}

/** Replace `target`'s children with what `load` builds, or with the message of the error it raises. */
export async function fill(target: HTMLElement, load: () => Promise<Child[]>): Promise<void> {
  try {
    target.replaceChildren(...(await load()));
  } catch (error) {
    target.replaceChildren(h('div', 'mlplat-error', (error as Error).message));
  }
}

/** A local, readable time for an ISO 8601 string; "-" for none. */
export function when(iso: string | null): string {
  return iso ? new Date(iso).toLocaleString() : '-';
}

/** The last part of a path. */
export function basename(path: string): string {
  return path.split('/').pop() ?? path;
}

/** A form control with its label above it. */
export function labelled(text: string, control: HTMLElement): HTMLElement {
  return h('label', 'mlplat-field', h('span', '', text), control);
}

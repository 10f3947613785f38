/** The notebook's Deploy button: choose a model, deploy it on Triton, show status, gRPC endpoint and a client. */
import { Clipboard, Dialog, Notification, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { IDeployment, IModel, IModelVersion, requestAPI } from './api';
import { h, labelled } from './dom';

type DeployRequest = { notebook: string } | { name: string; version: string };

/** Model: "the model trained in this notebook" or a registered one; version: the champion or a chosen one. */
class DeployChoice extends Widget {
  private readonly model = document.createElement('select');
  private readonly version = document.createElement('select');

  constructor(private readonly notebook: string, models: IModel[]) {
    super();
    this.addClass('mlplat-form');
    this.model.className = this.version.className = 'jp-mod-styled';
    this.model.append(new Option('The model trained in this notebook', ''), ...models.map(m => new Option(m.name, m.name)));
    this.model.addEventListener('change', () => this.offerVersions().catch(error => showErrorMessage('mlplat', error)));
    this.version.append(new Option('its newest version', ''));
    this.version.disabled = true;
    this.node.append(labelled('Model', this.model), labelled('Version', this.version));
  }

  getValue(): DeployRequest {
    return this.model.value ? { name: this.model.value, version: this.version.value } : { notebook: this.notebook };
  }

  private async offerVersions(): Promise<void> {
    const name = this.model.value;
    this.version.replaceChildren(new Option(name ? 'champion' : 'its newest version', ''));
    this.version.disabled = !name;
    if (name) {
      const versions = await requestAPI<IModelVersion[]>(`models/${encodeURIComponent(name)}/versions`);
      if (name === this.model.value) {
        this.version.append(...versions.map(v => new Option([`v${v.version}`, ...v.aliases].join(' '), v.version)));
      }
    }
  }
}

function deploymentBody(deployment: IDeployment): Widget {
  const copy = h('button', 'jp-mod-styled mlplat-copy', 'Copy client snippet');
  copy.addEventListener('click', () => Clipboard.copyToSystem(deployment.snippet));
  return new Widget({
    node: h('div', 'mlplat-deployment',
      h('p', '', 'Status: ', h('b', 'mlplat-status', deployment.status)),
      h('p', '', 'gRPC endpoint: ', h('code', 'mlplat-endpoint', deployment.endpoint)),
      h('p', '', `Triton model ${deployment.triton_model}, version ${deployment.version}; features `
        + deployment.features.join(', ')),
      h('pre', 'mlplat-snippet', deployment.snippet), copy)
  });
}

/** Ask what to deploy, deploy it and show the result; return the deployment (undefined if cancelled or refused). */
export async function deploy(panel: NotebookPanel): Promise<IDeployment | undefined> {
  try {
    const models = await requestAPI<IModel[]>('models');
    const choice = await showDialog({
      title: 'Deploy a model to Triton',
      body: new DeployChoice(panel.context.path, models),
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Deploy' })]
    });
    if (!choice.button.accept || !choice.value) {
      return undefined;
    }
    const toast = Notification.emit('Deploying…', 'in-progress', { autoClose: false });
    const deployment = await requestAPI<IDeployment>('deploy', choice.value).catch(error => {
      Notification.dismiss(toast);
      throw error;
    });
    const summary = `${deployment.name} v${deployment.version}: ${deployment.status}`;
    Notification.update({ id: toast, message: summary, type: 'success', autoClose: 5000 });
    await showDialog({
      title: summary,
      body: deploymentBody(deployment),
      buttons: [Dialog.okButton({ label: 'Close' })]
    });
    return deployment;
  } catch (error) {
    await showErrorMessage('Deploy failed', error as Error);
    return undefined;
  }
}
